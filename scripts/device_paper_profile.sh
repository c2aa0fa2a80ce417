#!/usr/bin/env bash
# Run what fits of the `paper` profile's MNIST tables on a lent GPU, inside a time budget, and bundle every finished
# cell so it can be merged into the local cache and rendered here with `reproduce --cached-only`.
#
#   OUT=/some/dir DNNPIRACY_GIT_COMMIT=$(git rev-parse --short=12 HEAD) bash scripts/device_paper_profile.sh 540
#
# The paper profile trains at batch 128 on 28x28 digits: one process leaves the GPU mostly idle, waiting for kernel
# launches. So the grid is split (`reproduce --arch/--seed/--blocks/--trigger-label`) over five processes that share
# one cache, each owning different targets (no two processes ever train the same target). SET picks the jobs:
#   SET=table1 or SET=table2: that table, two trigger labels per job. SET=round11: Table III's ResNet-152 row and
#   Table IV's 1-3 blocks, the paper-profile cells round 11's default still lacks. SET=mnist345 (the default):
#   1. Table III ResNet-34, then Table V (reuses those ResNet-34 label-0 targets)
#   2. Table III ResNet-101
#   3. Table III ResNet-152, seeds 0 and 2        4. Table III ResNet-152, seed 1
#   5. Table IV, 1-3 blocks (4 blocks is Table III's ResNet-34 row)
# A job cut by the budget keeps its finished cells (each cell is written atomically when done).
# Merging here: tar xzf bundle.tgz -C /tmp/b && cp -n /tmp/b/cells/*.json ~/.cache/dnnpiracy/runs/cells/
#   (and the logs likewise), then `dnnpiracy reproduce --table N --profile paper --out results/paper --cached-only`.
# Needs: python3 with torch, numpy, safetensors, matplotlib, click, tqdm (not captum); the mnist-10k tarball under
# $DATA_DIR; SET=table2 also Fashion-MNIST's four IDX files in $DATA_DIR/fashion-mnist (here:
# `cp /usr/share/datasets/fashion-mnist/*.gz .devdata/fashion-mnist/`, 30 MB of the call's 64 MiB).
# Resuming in a later GPU session: carry finished paper-profile cells in $CELLS_IN and they are skipped, e.g.
#   mkdir -p .devcache/cells && cp ~/.cache/dnnpiracy/runs/cells/<the table's paper-profile cells> .devcache/cells
# (.devdata and .devcache ignored by git, named in the device call's carry).
set -u
OUT="${OUT:?set OUT to the folder that receives bundle.tgz and log.txt}"
BUDGET="${1:-540}"
PROFILE="${PROFILE:-paper}"
DATA_DIR="${DATA_DIR:-.devdata}"
CACHE="${CACHE:-/tmp/dnnpiracy-cache}"
TABLES_OUT="${TABLES_OUT:-/tmp/dnnpiracy-paper}"
THREADS="${THREADS:-3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# nothing outside that machine can be reached: make the full-MNIST download fail at once (-> mnist-10k)
export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9
LOG="$OUT/log.txt"
mkdir -p "$OUT" "$CACHE/cells" "$CACHE/logs" "$TABLES_OUT"
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1; nproc
  python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
  "cuda", torch.cuda.is_available())'; } >>"$LOG" 2>&1
CELLS_IN="${CELLS_IN:-.devcache/cells}"
if [ -d "$CELLS_IN" ]; then
  cp -n "$CELLS_IN"/*.json "$CACHE/cells/" 2>/dev/null
  echo "seeded $(ls "$CACHE/cells" | wc -l) finished cells from $CELLS_IN" >>"$LOG"
fi
(while sleep 30; do echo "gpu $(date -u +%T) $(nvidia-smi --query-gpu=utilization.gpu,memory.used \
  --format=csv,noheader 2>&1)"; done) >>"$LOG" 2>&1 &
MONITOR=$!
end=$((SECONDS + BUDGET))

job() {   # job NAME TABLE [reproduce filters...]: one table (subset), inside what is left of the budget
  local name=$1 table=$2; shift 2
  local left=$((end - SECONDS))
  [ "$left" -lt 20 ] && { echo "$name: budget spent before table $table" >>"$LOG"; return; }
  echo "== $name: table $table $* ($left s left) $(date -u +%T)" >>"$LOG"
  timeout -k 15 "$left" python3 -m dnnpiracy --threads "$THREADS" reproduce --table "$table" --profile "$PROFILE" "$@" \
    --out "$TABLES_OUT/$name" --cache-dir "$CACHE" --data-dir "$DATA_DIR" >>"$TABLES_OUT/$name.log" 2>&1
  echo "== $name: table $table exit $? $(date -u +%T)" >>"$LOG"
}

pids=()
case "${SET:-mnist345}" in
  mnist345)   # Tables III-V (done in session 3 of the device runs: results/paper/device_run_3)
    (job j1 3 --arch resnet34; job j1t5 5) & pids+=($!)
    (job j2 3 --arch resnet101) & pids+=($!)
    (job j3 3 --arch resnet152 --seed 0 --seed 2) & pids+=($!)
    (job j4 3 --arch resnet152 --seed 1) & pids+=($!)
    (job j5 4 --blocks 1 --blocks 2 --blocks 3) & pids+=($!) ;;
  round11)   # what the paper-profile tables still lack with round 11's default (after device run 4): Table III's
              # ResNet-152 row and Table IV's 1-3-block rows (12 targets); carry results/cells/paper/*/ as CELLS_IN
              # so Table I's label-0 cells (= Table III ResNet-34, Table IV 4 blocks) and ResNet-101 are skipped:
              #   mkdir -p .devcache/cells && cp results/cells/paper/*/*.json .devcache/cells  (carry .devcache)
    for s in 0 1 2; do (job "r152s$s" 3 --arch resnet152 --seed "$s") & pids+=($!); done
    (job b1 4 --blocks 1) & pids+=($!)
    (job b23 4 --blocks 2 --blocks 3) & pids+=($!) ;;
  table1|table2)   # one table, two trigger labels per job (6 targets each); resume with CELLS_IN in a later session
    t=${SET#table}
    for pair in "0 1" "2 3" "4 5" "6 7" "8 9"; do
      set -- $pair
      (job "t${t}l$1$2" "$t" --trigger-label "$1" --trigger-label "$2") & pids+=($!)
    done ;;
  *) echo "unknown SET=$SET (mnist345, table1, table2, round11)" >>"$LOG" ;;
esac
[ "${#pids[@]}" -gt 0 ] && wait "${pids[@]}"
kill "$MONITOR" 2>/dev/null
echo "finished cells: $(ls "$CACHE/cells" | wc -l) $(date -u +%T)" >>"$LOG"
# cells + per-cell logs (targets stay behind: ResNet weights exceed what comes back) + the tables and job logs
tar czf "$OUT/bundle.tgz" -C "$CACHE" cells logs -C "$TABLES_OUT" . >>"$LOG" 2>&1
ls -la "$OUT" >>"$LOG"
