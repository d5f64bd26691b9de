#!/usr/bin/env bash
# The prepared GPU check (issue 15): AMP distillation and the FP16 teacher on CUDA, FP16 and INT8 TensorRT engines
# of a teacher and a distilled student with their engine-vs-ONNX parity, `val` of each engine, and teacher vs
# student engine speed; figures in OUT/report.md (default runs/gpu_check). See benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh [OUT]
#
# Where the project is not installed (a bare GPU machine with torch but without yolov5, e.g. the device tool's),
# put the missing wheels in .whl/ first (benchmarks/gpu_wheels.sh downloads them where pip works); they are
# installed offline into a temporary folder. On a machine without a CUDA GPU it says so in one line and exits 1.
# The whole check stops after GPU_CHECK_LIMIT seconds (default 470: inside an 8-minute call).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
PY=${PYTHON:-python3}
LIMIT=${GPU_CHECK_LIMIT:-470}

usable() {  # prints why not, the last line of the probe's output
    "$PY" - <<'PY' 2>&1
import sys
try:
    import torch
except ImportError as e:
    sys.exit(f"torch does not import ({e})")
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False")
try:
    import yolodistill.detection.trainer  # noqa: F401 -- the project and yolov5 import
except ImportError as e:
    sys.exit(f"yolodistill does not import ({e}): pip install -e . or carry wheels in .whl/")
PY
}
why=$(usable); ok=$?
if [ $ok -ne 0 ] && [[ $why == *"does not import"* ]] && compgen -G ".whl/*.whl" >/dev/null; then
    # a bare machine: the project and yolov5 from the carried wheels, offline, into a temporary folder
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
        .whl/*.whl || { echo "gpu_check: the wheels in .whl/ did not install" >&2; exit 1; }
    export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
    why=$(usable); ok=$?
fi
[ $ok -eq 0 ] || { echo "gpu_check: no usable CUDA GPU here: ${why##*$'\n'}; nothing measured" >&2; exit 1; }
export PYTHONUNBUFFERED=1
timeout "$LIMIT" "$PY" benchmarks/gpu_check.py --out "$OUT" --budget-minutes "$(( (LIMIT - 60) / 60 ))"
rc=$?
[ $rc -eq 124 ] && echo "gpu_check: stopped at the ${LIMIT} s limit; $OUT/report.md holds the stages that finished" >&2
exit $rc
