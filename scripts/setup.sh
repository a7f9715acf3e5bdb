#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with masc-hf and its test tools.
# PyTorch goes in first: `torch==2.13.0` is the CPU build that lies on this machine's disk;
# elsewhere, install the torch build you want (CPU or CUDA) before running this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "torch==${MASC_TORCH_VERSION:-2.13.0}"
fi
python -m pip install --quiet -e ".[test]"
# The quickstart's real data: Fashion-MNIST from Debian (elsewhere it comes from the Hub).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; the quickstart will read Fashion-MNIST from the Hub"
fi
python -c "import masc_hf, torch; print('masc-hf', masc_hf.__version__, '| torch', torch.__version__)"
