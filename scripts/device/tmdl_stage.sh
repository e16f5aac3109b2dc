#!/bin/sh
# TMDL on the fusion benchmark on a lent GPU machine (scripts/device/README.md): run THERE, from the
# repository root, after scripts/device/pack_tmdl.py ran HERE, with `carry` [".device/tmdl"]:
#
#   sh scripts/device/tmdl_stage.sh [tmdl_stage.py flags: --minutes 3 --presets paper compact ...]
#
# Writes the benchmark there, trains each preset on the GPU and scores it on the held-out set beside
# the structured baseline; leaves one JSON per preset and stage.log under $OUT.
set -eu
out=${OUT:-/tmp/llnm-device-out}
work=/tmp/llnm-tmdl
mkdir -p "$out" "$work"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" .device/tmdl/whl/*.whl
export PYTHONPATH="$work/site:$PWD/services${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OUT="$out"
python3 scripts/device/tmdl_stage.py --work "$work" "$@"
ls -la "$out"
