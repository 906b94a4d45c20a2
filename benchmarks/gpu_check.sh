#!/usr/bin/env bash
# The GPU path in one command, from a fresh copy of the project:
#
#     bash benchmarks/gpu_check.sh [--out DIR]
#
# nvidia-smi and versions, several-ranks-on-one-GPU refused, a 2-epoch single run on
# cuda (demo data, then a generated I-JEPA ViT-H/14 checkpoint and Tiny-ImageNet folder),
# the Ray checks (4 trials at --gpus-per-trial 0.25, idle workers' GPU memory, a DDP
# trial) and the extraction throughput; benchmarks/gpu_check.py says what each step does.
# Under 8 minutes on one GPU. Without a GPU the GPU-only steps print "no GPU: skipped"
# and the rest runs small on the CPU; exit 0 when nothing that ran failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
