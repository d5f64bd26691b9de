#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on a bare GPU machine that has torch, torchvision, onnx, onnxruntime, OpenCV
# and pandas/matplotlib but not this project (the device tool's image: Python 3.12, x86-64, no internet there).
# Run here, where pip reaches the registry; the wheels land in .whl/ (ignored by git, carried to the machine).
#
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]      # default 3.12
#
# What goes: this project as a wheel; yolov5 7.0.14 and ultralytics (yolov5's utils import its checks); numpy < 2.4 (yolov5's val calls np.trapz) and setuptools
# < 81 (yolov5 imports pkg_resources), as pyproject.toml pins them. TensorRT does not fit: its libraries are over
# 1 GB against the 64 MiB a device call may carry, so on such a machine the engine stages report that TensorRT
# is missing and the CUDA stages still run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip wheel -q --no-deps -w .whl .
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "yolov5==7.0.14" "numpy>=2,<2.4" "setuptools<81" \
    "ultralytics==8.4.190" \
    ultralytics-thop
du -sh .whl && ls .whl
