#!/usr/bin/env bash
# Create benchmarks/.venv-peers: an environment for the peer libraries the benchmarks
# compare against (DeepCTR-Torch). It is NOT a project dependency and is git-ignored.
# torch is pinned first so pip never pulls a CUDA build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-peers"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# Pin the CPU torch first (the same version the project uses) so no CUDA build is pulled.
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet "torch==2.13.0" "deepctr-torch==0.3.0" scikit-learn numpy requests
"$venv/bin/python" -c "import torch, deepctr_torch; print('peers ready: torch', torch.__version__, 'deepctr-torch', deepctr_torch.__version__)"
