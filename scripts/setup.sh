#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with masc-hf and its test tools.
# PyTorch and torchvision go in first, as a pair built for each other (torch-fidelity, in the test
# and eval extras, needs torchvision): on x86_64 torch 2.14.1 + torchvision 0.29.1 (a CUDA build
# that also runs on the CPU; pip on Python 3.11 takes both from this machine's disk), elsewhere
# torch 2.9.1 + torchvision 0.24.1. Nothing is installed when torch and torchvision already import
# together, so install the CUDA pair you want first (or set MASC_TORCH_VERSION and
# MASC_TORCHVISION_VERSION) and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch, torchvision" 2>/dev/null; then
  # (a torch without torchvision, or a torchvision that does not fit it, e.g. 'operator torchvision::nms does not exist')
  if [ "$(uname -m)" = x86_64 ]; then torch_pair=(2.14.1 0.29.1); else torch_pair=(2.9.1 0.24.1); fi
  python -m pip install --quiet "torch==${MASC_TORCH_VERSION:-${torch_pair[0]}}" "torchvision==${MASC_TORCHVISION_VERSION:-${torch_pair[1]}}"
fi
python -m pip install --quiet -e ".[test]"
# The quickstart's real data: Fashion-MNIST from Debian (elsewhere it comes from the Hub).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; the quickstart will read Fashion-MNIST from the Hub"
fi
python -c "import masc_hf, torch, torchvision; print('masc-hf', masc_hf.__version__, '| torch', torch.__version__, '| torchvision', torchvision.__version__)"
