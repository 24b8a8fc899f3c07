#!/usr/bin/env bash
# The prepared GPU check (issue 20): every CUDA path in one run of under 8 minutes on one GPU, one JSON file of
# results (device, torch/CUDA versions, each step's status and figures). The steps are in tools/gpu_check.py.
#
#   bash tools/gpu_check.sh [--out DIR]              on a CUDA machine (writes DIR/gpu_check.json)
#   bash tools/gpu_check.sh --dry-run [--out DIR]    the same steps on the CPU at tiny sizes (the test suite runs it)
#
# Exit 0 when every step passed or was skipped, 1 when one failed, 2 without CUDA (and without --dry-run).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec "${PYTHON:-python}" tools/gpu_check.py "$@"
