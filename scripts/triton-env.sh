#!/usr/bin/env bash
# Create .venv-triton/: the environment that runs the real Triton server shipped in the nvidia-pytriton
# wheel for the tests. Its Python backend needs numpy < 2 (with numpy 2 it silently passes zeros), so it
# cannot share .venv (numpy 2). The test harness serves model_repository/ through Python-backend
# copies whose model.py runs the same model.onnx with onnxruntime (see tests/service/triton_harness.py).
# Idempotent: re-creates the environment only when this script changes.
set -euo pipefail
cd "$(dirname "$0")/.."
# The same interpreter as .venv (the Triton wheel ships Python-backend stubs for 3.8 to 3.13).
PY=${PYTHON:-$(.venv/bin/python -c 'import sys; print(sys._base_executable)' 2>/dev/null || echo python3)}
venv=.venv-triton
stamp=$venv/.llnm-triton-env
want=$(sha256sum scripts/triton-env.sh | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
rm -rf "$venv"
"$PY" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip wheel
"$venv/bin/pip" install -q "numpy<2" "nvidia-pytriton==0.7.0" "onnxruntime>=1.18"
"$venv/bin/python" - <<'PY'
import numpy, onnxruntime, pytriton
from pathlib import Path
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
root = Path(pytriton.__file__).parent / "tritonserver"
assert (root / "bin" / "tritonserver").is_file(), root
print("triton env ok:", "numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)
PY
echo "$want" > "$stamp"
