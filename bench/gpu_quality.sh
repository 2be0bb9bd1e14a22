#!/usr/bin/env bash
# Full CIFAR-10 on one GPU in at most ten minutes, next to the paper's Table 1.
#
#   bash bench/gpu_quality.sh                        # on the GPU machine
#   bash bench/gpu_quality.sh --dry-run              # rehearsal on a CPU, tiny sizes (bench/work/quality/results)
#   bash bench/gpu_quality.sh --pretrain-epochs 20   # any bench/quality.py flag overrides the preset
#
# What it runs (bench/quality.py --gpu): 50,000 CIFAR-10 training images written once from ../shared/data
# (or $SHARED_DATA), symmetric 40 % and 80 % and asymmetric 40 % noise from `python -m engine noise`, SimCLR
# pre-training once (label-free, shared by the three noise settings), then for each setting the ELR
# classifier and the GMM flags with --test on the 10,000 CIFAR-10 test images. A deadline at 540 s stops
# whatever is still running, so the reports are always written. Output: bench/results/gpu_quality.md
# (+ .json, and quality_cifar10-n50000-*.md per setting), copied into $OUT when that is set.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
extra=()
if [ -n "${SHARED_DATA:-}" ]; then extra+=(--shared-data "$SHARED_DATA"); fi
"$PY" bench/quality.py --gpu ${extra[@]+"${extra[@]}"} "$@"
status=$?
if [ -n "${OUT:-}" ]; then
  for f in bench/results/gpu_quality.* bench/results/quality_cifar10-n50000-* \
           bench/work/quality/results/gpu_quality.*; do
    if [ -f "$f" ]; then cp "$f" "$OUT"/; fi
  done
fi
exit "$status"
