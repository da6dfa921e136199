#!/usr/bin/env bash
# Cloud TPU VM pod slice: installs dsop_jax with JAX for TPUs on every worker (from REPO_URL, or
# the copy already at ~/dsop_jax), then runs the same training command on every worker
# (jax.distributed.initialize() finds the other workers by itself). WORKDIR must be one every
# worker sees: a Cloud Storage URL (gs://bucket/run) or a shared filesystem at the same path.
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh configs/imagenet_r50.py gs://bucket/r50
set -euo pipefail
usage='usage: TPU_NAME=... ZONE=... [REPO_URL=...] launch/tpu_pod.sh CONFIG WORKDIR [overrides...]'
config=${1:?$usage}
workdir=${2:?$usage}
shift 2
repo=${REPO_URL:-https://github.com/dsop-jax/dsop_jax}
install="(test -d ~/dsop_jax || git clone $repo ~/dsop_jax) && pip install -q -e ~/dsop_jax[tpu]"
remote="$install && cd ~/dsop_jax && python -m dsop_jax.main --distributed --config=$config --workdir=$workdir $*"
cmd=(gcloud compute tpus tpu-vm ssh "${TPU_NAME:?set TPU_NAME}" --zone="${ZONE:?set ZONE}"
     --worker=all --command="$remote")
if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "${cmd[@]}"; else exec "${cmd[@]}"; fi
