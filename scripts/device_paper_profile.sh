#!/usr/bin/env bash
# Run what fits of the `paper` profile's MNIST tables on a lent GPU, inside a time budget, and bundle every finished
# cell so it can be merged into the local cache (scripts/merge_device_bundle.sh) and rendered here.
#
#   OUT=/some/dir DNNPIRACY_GIT_COMMIT=$(git rev-parse --short=12 HEAD) bash scripts/device_paper_profile.sh 450
#
# Order: Table III (ResNet-34/101/152, label 0), then V and IV, which reuse III's ResNet-34 label-0 targets.
# A table cut by the budget keeps its finished cells (each cell is written atomically when done).
# Needs: python3 with torch, numpy, safetensors, matplotlib, click, tqdm; the mnist-10k tarball under $DATA_DIR.
# Resuming in a later GPU session: carry the finished paper-profile cells and the script skips them, e.g.
#   mkdir -p .devcache/cells && grep -l '"epochs": 15' ~/.cache/dnnpiracy/runs/cells/*.json | xargs cp -t .devcache/cells
# (both .devdata and .devcache listed in .git/info/exclude and in the device call's carry).
set -u
OUT="${OUT:?set OUT to the folder that receives bundle.tgz and log.txt}"
BUDGET="${1:-450}"
DATA_DIR="${DATA_DIR:-.devdata}"
CACHE=/tmp/dnnpiracy-cache
TABLES_OUT=/tmp/dnnpiracy-paper
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
end=$((SECONDS + BUDGET))
for t in 3 5 4; do
  left=$((end - SECONDS))
  [ "$left" -lt 20 ] && { echo "budget spent before table $t" >>"$LOG"; break; }
  echo "== table $t ($left s left) $(date -u +%T)" >>"$LOG"
  timeout "$left" python3 -m dnnpiracy --threads "$(nproc)" reproduce --table "$t" --profile paper \
    --out "$TABLES_OUT" --cache-dir "$CACHE" --data-dir "$DATA_DIR" >>"$LOG" 2>&1
  echo "== table $t exit $? $(date -u +%T)" >>"$LOG"
done
# cells + per-cell logs (targets stay behind: ResNet weights exceed what comes back) + the tables as rendered there
tar czf "$OUT/bundle.tgz" -C "$CACHE" cells logs -C "$TABLES_OUT" . >>"$LOG" 2>&1
ls -la "$OUT" >>"$LOG"
