#!/usr/bin/env bash
# Plain network against DSoP-Net over several seeds, one machine: trains CONFIG as configured
# (DSoP-Net) and without branches (plain), once per seed, into OUT/{plain,dsop}_seedS, then draws
# both (OUT/curves.png) and writes the per-head table and the mean +- std of the main head's final
# top-1 error per configuration (OUT/table.md). Rerun it to resume: finished runs are kept.
#   launch/seeds.sh configs/quickstart.py /tmp/fmnist "1 2 3" --config.data.dataset=fashion_mnist ...
# DRY_RUN=1 prints the commands instead of running them; PYTHON=... picks the interpreter.
set -euo pipefail
usage='usage: launch/seeds.sh CONFIG OUT "SEED ..." [overrides...]'
config=${1:?$usage}
out=${2:?$usage}
seeds=${3:?$usage}
shift 3
cd "$(dirname "$0")/.."
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "$@"; else "$@"; fi
}
workdirs=()
for seed in $seeds; do
  for name in plain dsop; do
    plain=()
    if [[ $name == plain ]]; then plain=(--config.model.branches.pattern=); fi
    run "${PYTHON:-python}" -m dsop_jax.main --config="$config" --workdir="$out/${name}_seed$seed" \
        --config.train.seed="$seed" "$@" "${plain[@]}"
    workdirs+=(--workdir="$out/${name}_seed$seed")
  done
done
run "${PYTHON:-python}" -m dsop_jax.plot "${workdirs[@]}" --output="$out/curves.png" --table="$out/table.md"
