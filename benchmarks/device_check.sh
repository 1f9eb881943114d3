#!/usr/bin/env bash
# The GPU checks in one device call (about 7-9 minutes on one H100):
#   1. every gpu-marked test (search: identical top-K to the CPU path, ties included; extraction);
#   2. benchmarks/extract.py on the GPU: VGG16-NetVLAD at 480x640, fp32 and bf16 (target 400 img/s);
#   3. benchmarks/scale.py on the GPU: ROWS x 4096 float16 rows read cold from local disk,
#      1,000 queries, exact top-100 through harness.evaluate, extrapolated to Outdoor-Ams.
# It runs from the repository root with the machine's own Python (numpy, h5py, torch, pytest,
# hypothesis), the harness from the working tree (no install: nothing can be downloaded
# there). Without faiss-gpu the torch-cuda backend searches. Logs go to $OUT when set.
#
#   bash benchmarks/device_check.sh                 # ROWS=3200000 (26 GB: fits a 64 GB disk)
#   ROWS=6400000 bash benchmarks/device_check.sh    # the full 52.8 GB where the disk allows
set -u -o pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-/tmp/device-check}
ROWS=${ROWS:-3200000}
mkdir -p "$OUT_DIR"
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpus.txt"
df -h "${TMPDIR:-/tmp}" | tee -a "$OUT_DIR/gpus.txt"
# every gpu-marked test (search, extraction precision, training), wherever it lives
$PY -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tee "$OUT_DIR/gpu-tests.log" || status=1
# extraction at 480x640: fp32 and bf16 model rows, then end to end in bf16 (target 400 img/s)
$PY benchmarks/extract.py --no-cpu --gpu-images 2048 --json "$OUT_DIR/extract-gpu.json" 2>&1 \
    | tee "$OUT_DIR/extract-gpu.log" || status=1
$PY benchmarks/scale.py --rows "$ROWS" --ngpu -1 2>&1 | tr '\r' '\n' | grep -v 'rows/s]' \
    | tee "$OUT_DIR/scale-gpu.log" || status=1
exit $status
