#!/bin/sh
# A nodule-model training stage on a lent GPU machine (scripts/device/README.md): run THERE, from the
# repository root, after scripts/device/pack_nodule.py ran HERE, with `carry` [".device/nodule.tar.gz",
# ".device/whl", ".device/stubs"]:
#
#   sh scripts/device/nodule_stage.sh MINUTES [more `llnm train-seg` flags]
#
# Continues the shipped nodule model on the packed training set for MINUTES of training (the best epoch
# chosen by Ultralytics on the select-case frames), then leaves under $OUT what the device tool can
# bring back (8 files of at most 16 MiB): best.pt in parts of 15 MiB, results.csv, train.log.
# DEVICE (default 0), WORKERS (8), BATCH (32), IMGSZ (320) and LR (0.0005: a fine-tuning stage; 0.002 without
# warm-up wrecks the shipped weights in one epoch) override the settings.
set -eu
minutes=${1:?usage: nodule_stage.sh MINUTES [llnm train-seg flags]}
shift
out=${OUT:-/tmp/llnm-device-out}
work=/tmp/llnm-device
mkdir -p "$out" "$work"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" .device/whl/*.whl
tar xzf .device/nodule.tar.gz -C "$work"
export PYTHONPATH="$work/site:$PWD/.device/stubs:$PWD/services${PYTHONPATH:+:$PYTHONPATH}"
export YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import ultralytics, torch; print('ultralytics', ultralytics.__version__, ultralytics.__file__, 'torch', torch.__version__, torch.cuda.is_available())"
python3 -m llnm train-seg --model nodule --dataset "$work/nodule" --out "$work/run" \
    --init model_repository/nodule_seg/1/model.onnx --max-minutes "$minutes" --epochs 300 --no-export --lr "${LR:-0.0005}" \
    --device "${DEVICE:-0}" --workers "${WORKERS:-8}" --batch "${BATCH:-32}" --imgsz "${IMGSZ:-320}" "$@" \
    > "$out/train.log" 2>&1 || { tail -n 40 "$out/train.log"; exit 1; }
tail -n 5 "$out/train.log"
split -b 15M "$work/run/nodule/yolo/weights/best.pt" "$out/best.pt.part-"
cp "$work/run/nodule/yolo/results.csv" "$out/"
ls -la "$out"
