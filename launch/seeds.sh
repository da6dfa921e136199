#!/usr/bin/env bash
# Plain network against DSoP-Net over training subsets and seeds, one machine: for every subset S
# (config.data.train_subset_seed) and seed N (config.train.seed), trains CONFIG as configured
# (DSoP-Net) and without branches (plain) into OUT/{plain,dsop}_subsetS_seedN, then draws the
# curves (OUT/curves.png), each pair's final error and the mean curves with a band over runs
# (OUT/pairs.png), and writes the per-head table, each pair's gain, the per-subset mean gains and
# the paired mean gain with its 95% t-interval and DSoP-Net's time over plain's (OUT/table.md).
# Rerun it to resume: finished runs are kept, a run stopped midway resumes from its checkpoint.
#   SUBSETS="0 1 2" launch/seeds.sh configs/quickstart.py /tmp/fmnist "1 2 3" \
#       --config.data.dataset=fashion_mnist --config.data.train_subset=10000 ...
# SUBSETS (default "0") lists the subset seeds; DRY_RUN=1 prints the commands instead of running
# them; PYTHON=... picks the interpreter.
set -euo pipefail
usage='usage: [SUBSETS="S ..."] launch/seeds.sh CONFIG OUT "SEED ..." [overrides...]'
config=${1:?$usage}
out=${2:?$usage}
seeds=${3:?$usage}
shift 3
cd "$(dirname "$0")/.."
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "$@"; else "$@"; fi
}
workdirs=()
for subset in ${SUBSETS:-0}; do
  for seed in $seeds; do
    for name in plain dsop; do
      plain=()
      if [[ $name == plain ]]; then plain=(--config.model.branches.pattern=); fi
      workdir="$out/${name}_subset${subset}_seed$seed"
      run "${PYTHON:-python}" -m dsop_jax.main --config="$config" --workdir="$workdir" \
          --config.train.seed="$seed" --config.data.train_subset_seed="$subset" "$@" "${plain[@]}"
      workdirs+=(--workdir="$workdir")
    done
  done
done
run "${PYTHON:-python}" -m dsop_jax.plot "${workdirs[@]}" --output="$out/curves.png" \
    --pairs_output="$out/pairs.png" --table="$out/table.md"
