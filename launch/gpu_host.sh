#!/usr/bin/env bash
# One host, all its GPUs, one process (JAX drives every local device; no jax.distributed).
#   launch/gpu_host.sh /scratch/runs/q1p5b_dots_rr --config=configs/qwen1p5b_math.py:method=dots_rr \
#     --config.model.path=/models/Qwen2.5-Math-1.5B
set -euo pipefail
WORKDIR=${1:?usage: $0 WORKDIR [main.py flags]}; shift
# INSTALL=1 first installs jax's CUDA 12 build (the `cuda12` extra).
if [ -n "${INSTALL:-}" ]; then pip install -q -e "$(dirname "$0")/..[cuda12]"; fi
export HF_HUB_OFFLINE=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
exec python -m dots_jax.main --distributed=off --workdir="$WORKDIR" "$@"
