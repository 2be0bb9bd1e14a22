#!/usr/bin/env bash
# The GPU check: one script, at most 12 minutes, ready for the first time a GPU machine is at hand.
#
# 1. On a machine with ../shared/data, copy what the check reads into the git-ignored bench/data/shared/
#    (about 19 MB; the GPU machine cannot reach ../shared/data):
#        mkdir -p bench/data/shared
#        cp ../shared/data/{cifar10_train_jpeg.npz,cifar10_test_jpeg.npz,cifar10n_dev_labels.npz,to_folder.py} \
#           bench/data/shared/
#    If the GPU machine's python3 lacks pytest, carry it too:
#        python -m pip install --target bench/data/pylib pytest
# 2. On the GPU machine, from the repository (bench/data/shared and bench/data/pylib travel with it):
#        SHARED_DATA=bench/data/shared bash bench/gpu_check.sh
#    Where one command may run at most ten minutes, split it (the second call adds to the same report):
#        SHARED_DATA=bench/data/shared bash bench/gpu_check.sh --only preflight,tests,throughput,table1  # ~530 s
#        SHARED_DATA=bench/data/shared bash bench/gpu_check.sh --only cifar10n                           # ~175 s
# 3. Rehearsal anywhere, every step at toy size on the CPU (under a minute on an idle machine):
#        bash bench/gpu_check.sh --dry-run
#
# Steps and their deadlines (seconds): preflight 30 (python, torch, CUDA, card, packages), tests 100
# (pytest -m gpu: bf16 autocast, GPU-resident data, the out-of-memory message, resume), throughput 100
# (bench/throughput.py --device cuda: vs a DataLoader + PIL loop, goal >= 3x; fraction of the bf16 peak),
# table1 300 (bench/quality.py --gpu, as bench/gpu_quality.sh: full CIFAR-10 with ELR at symmetric 40 / 80 %
# and asymmetric 40 % noise next to the paper's 92.0 / 84.8 / 89.5), cifar10n 175 (CIFAR-10N worst and aggre
# on the 45,000 dev rows, goal AUROC >= 0.97 on worst). A step past its deadline is stopped; the report is
# rewritten after every step: bench/results/gpu_check_<card>.md (dry run: bench/work/gpu_check_dry/results/),
# copied with the logs into $OUT when that is set. Details: bench/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" bench/gpu_check.py "$@"
