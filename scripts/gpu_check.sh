#!/usr/bin/env bash
# Every GPU check of the project in one short run, for a borrowed GPU machine (run from the repository
# root). It uses the machine's own Python and CUDA build of torch (no .venv: the Makefile would install
# the CPU build). Results go to stdout and, when $OUT is set, to $OUT/gpu_check.log.
#
#   bash scripts/gpu_check.sh            # about 8-10 minutes on an H100/H200
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
LOG=${OUT:-/tmp}/gpu_check.log
python3 -m pip install -q "pyzmq>=25,<28" msgpack hypothesis pytest-timeout numba SimpleITK scikit-image 2>/dev/null || true
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  echo "== GPU tests"
  timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
  echo "== XCCL: CUDA IPC vs pinned host"
  timeout 120 python3 benchmarks/xccl_bench.py --cuda --iters 50
  echo "== engine vs HF, OLMoE shape, batch 128"
  timeout 300 python3 benchmarks/gpu_engine_vs_hf.py --batch 128 --prompt-len 128 --new-tokens 32 --profile
  echo "== mrct: GPU tests, then the intra-procedural time on cpu and cuda (needs SimpleITK, scikit-image)"
  timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/mrct/test_ctct_refine.py
  timeout 240 python3 benchmarks/mrct_intra_device.py --cases 3 --pre truth
} 2>&1 | tee "$LOG"
