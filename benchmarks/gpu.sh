#!/usr/bin/env bash
# GPU benchmark (one H100/H200, about 5-8 minutes): SFT, DPO, GRPO on a random ~1B Llama in bf16,
# posttrain's defaults against TRL's; writes runs/gpu-bench/results.md. See benchmarks/gpu_bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 470 "$PY" benchmarks/gpu_bench.py --out "${OUT:-runs/gpu-bench}" "$@"
