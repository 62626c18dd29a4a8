#!/usr/bin/env bash
# A TPU pod slice: every worker runs the same command; jax.distributed initialises from the TPU
# environment (--distributed=on), process 0 writes logs and checkpoints. The workdir
# must be a path every worker sees: a gs:// URL (the `gcs` extra), a gcsfuse mount or an NFS share.
# INSTALL=1 first installs jax's TPU build and gcsfs on every worker (the `tpu` and `gcs` extras).
#   TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh gs://my-bucket/runs/q7b_dots_rr \
#     --config=configs/qwen7b.py:method=dots_rr --config.model.path=gs://my-bucket/Qwen2.5-Math-7B
set -euo pipefail
WORKDIR=${1:?usage: $0 WORKDIR [main.py flags]}; shift
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
REPO=${REPO:-~/dots_jax}
printf -v ARGS '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command \
  "cd $REPO && ${INSTALL:+pip install -q -e '.[tpu,gcs]' &&} HF_HUB_OFFLINE=1 python -m dots_jax.main --distributed=on --workdir=$WORKDIR $ARGS"
