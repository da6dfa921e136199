#!/usr/bin/env bash
# One machine, all its GPUs, one process (jax.jit splits each batch over every local device).
#   launch/local.sh configs/imagenet_r50.py /data/runs/r50_dsop [--config.x=... ...]
# DRY_RUN=1 prints the command instead of running it; PYTHON=... picks the interpreter (default: python).
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
shift 2
cd "$(dirname "$0")/.."
cmd=("${PYTHON:-python}" -m dsop_jax.main --config="$config" --workdir="$workdir" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "${cmd[@]}"; else exec "${cmd[@]}"; fi
