#!/usr/bin/env bash
# The GPU checks, in one call on a device machine (tool `device`, ~15 minutes in all, 10 per command):
#   here:   make device-kit             # .devpy: the pure-Python packages the device image lacks
#   there:  bash bench/device_check.sh  # run with carry [".devpy"] and timeout_s ~540
# Runs the CUDA tests, then bench/gradcam.py --device cuda (ResNet-50, 224, batch 128, bf16, and the
# end-to-end JPEG mode), and writes both outputs under $OUT (or ./device-out) for bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-out}"
mkdir -p "$out"
export PYTHONPATH=".devpy:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
py="${PYTHON:-python3}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$out/device.txt"
timeout 150 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/test_saliency.py tests/test_loader.py 2>&1 | tee "$out/cuda_tests.txt"
timeout 330 "$py" bench/gradcam.py --device cuda "$@" 2>&1 | tee "$out/gradcam_cuda.txt"
