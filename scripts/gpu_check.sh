#!/usr/bin/env bash
# Run the benchmark on CUDA, on any machine with an NVIDIA GPU and onnxruntime-gpu
# (CUDA 13, cuDNN 9). Usage: scripts/gpu_check.sh [extra `nst bench` options]
# Writes benchmarks/results/<date>-cuda.{json,md}; exits non-zero when CUDA cannot start.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/nst ]; then
    "$PY" -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
fi
.venv/bin/python - <<'PY'
import onnxruntime as ort
print("onnxruntime", ort.__version__, "providers:", ort.get_available_providers())
PY
[ -f exported_models/vgg16.onnx ] || .venv/bin/nst export
.venv/bin/nst info
exec .venv/bin/nst bench --provider cuda --sizes 256,512,1024 "$@"
