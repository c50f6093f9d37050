#!/usr/bin/env bash
# GPU check: a few hundred bf16 training steps of the default model and of HRNet-W48 + OCRNet at
# the paper's crop (512 x 1024, batch 8), with and without PiCo; prints step time, images/s and
# peak GPU memory. Needs an NVIDIA GPU; sets up .venv like `make` when it is missing. About 5-10
# minutes on one H100-class GPU. Extra arguments go to scripts/gpu_check.py (e.g. --steps 100).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  make install
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 590 .venv/bin/python scripts/gpu_check.py "$@"
