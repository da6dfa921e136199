#!/usr/bin/env bash
# Cloud TPU VM pod slice: the same command on every worker (jax.distributed.initialize() finds the
# other workers by itself). The repository must already be at ~/dsop_jax on every worker, and
# WORKDIR must be storage every worker sees (e.g. a gs:// bucket).
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh configs/imagenet_r50.py gs://bucket/r50
set -euo pipefail
config=${1:?usage: TPU_NAME=... ZONE=... launch/tpu_pod.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: TPU_NAME=... ZONE=... launch/tpu_pod.sh CONFIG WORKDIR [overrides...]}
shift 2
remote="cd ~/dsop_jax && python -m dsop_jax.main --distributed --config=$config --workdir=$workdir $*"
cmd=(gcloud compute tpus tpu-vm ssh "${TPU_NAME:?set TPU_NAME}" --zone="${ZONE:?set ZONE}"
     --worker=all --command="$remote")
if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "${cmd[@]}"; else exec "${cmd[@]}"; fi
