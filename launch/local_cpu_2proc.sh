#!/usr/bin/env bash
# Two processes on this machine, CPU only, gloo collectives: the multi-host code path in miniature.
#   launch/local_cpu_2proc.sh WORKDIR [--config=configs/tiny.py:micro] [--config.x=y ...]
# Each process owns DEVICES_PER_PROCESS simulated CPU devices; process 0 writes logs and checkpoints.
set -euo pipefail
WORKDIR=${1:?usage: $0 WORKDIR [main.py flags]}; shift
PORT=${PORT:-12355}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
export HF_HUB_OFFLINE=1 JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}"
pids=()
for id in 0 1; do
  python -m dots_jax.main --workdir="$WORKDIR" --cpu_collectives=gloo \
    --coordinator="127.0.0.1:${PORT}" --num_processes=2 --process_id=$id "$@" \
    > "${WORKDIR%/}.proc${id}.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
cat "${WORKDIR%/}.proc0.log"
exit $status
