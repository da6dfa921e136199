#!/usr/bin/env bash
# A GPU check in one command, on a host with one NVIDIA GPU and jax[cuda] (with flax, optax, numpy,
# absl) but nothing else of ours: no TensorFlow, tfds or clu, no install of dsop_jax (it runs from
# this checkout). It benchmarks plain ResNet-50-s2 and DSoP ResNet-50-s1 in bf16 at batch 256, the
# iSQRT-COV micro-benchmark, and 200 synthetic training steps of each with the loss falling, and
# prints one JSON summary (launch/gpu_check.py). ml_collections, the one other package it needs, is
# pure Python: where the host lacks it, run `launch/gpu_check.sh --bundle` on a machine where
# dsop_jax is installed and copy the checkout (with launch/gpu_deps) to the host.
#   launch/gpu_check.sh [--quick] [--train_steps=N] [--output=FILE]
#   launch/gpu_check.sh --bundle    (GPU_DEPS=DIR: bundle to and run from DIR instead)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
deps=${GPU_DEPS:-$PWD/launch/gpu_deps}  # Where --bundle copies ml_collections, and the check finds it.
if [[ "${1:-}" == --bundle ]]; then
  rm -rf "$deps" && mkdir -p "$deps"
  source=$("$python" -c 'import ml_collections, os; print(os.path.dirname(ml_collections.__file__))')
  cp -r "$source" "$deps/ml_collections"
  find "$deps" -name __pycache__ -prune -exec rm -rf {} +
  echo "copied $source to $deps/ml_collections"
  exit 0
fi
export PYTHONPATH="$PWD:$deps${PYTHONPATH:+:$PYTHONPATH}"
if ! "$python" -c 'import ml_collections' 2> /dev/null; then
  echo "launch/gpu_check.sh needs ml_collections (pure Python): pip install ml_collections, or run" \
       "'launch/gpu_check.sh --bundle' where dsop_jax is installed and copy $deps along." >&2
  exit 1
fi
exec "$python" launch/gpu_check.py "$@"
