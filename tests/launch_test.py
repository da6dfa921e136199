"""launch/ scripts: their dry runs print the training command they would run, with the arguments."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('script, env, expected', [
    ('local.sh', {}, 'python -m dsop_jax.main --config=configs/quickstart.py --workdir=/tmp/w '
                     '--config.train.num_epochs=1'),
    ('slurm.sbatch', {}, 'srun --kill-on-bad-exit=1 python -m dsop_jax.main --distributed '
                         '--config=configs/quickstart.py --workdir=/tmp/w --config.train.num_epochs=1'),
    ('tpu_pod.sh', {'TPU_NAME': 'pod', 'ZONE': 'z'},
     'gcloud compute tpus tpu-vm ssh pod --zone=z --worker=all --command=(test -d ~/dsop_jax || git '
     'clone https://github.com/dsop-jax/dsop_jax ~/dsop_jax) && pip install -q -e ~/dsop_jax[tpu] && '
     'cd ~/dsop_jax && python -m dsop_jax.main --distributed --config=configs/quickstart.py '
     '--workdir=/tmp/w --config.train.num_epochs=1'),
])
def test_dry_run_prints_the_training_command(script, env, expected):
  out = subprocess.run(['bash', os.path.join(ROOT, 'launch', script), 'configs/quickstart.py',
                        '/tmp/w', '--config.train.num_epochs=1'],
                       env={**os.environ, 'DRY_RUN': '1', **env}, capture_output=True, text=True,
                       check=True).stdout.strip()
  assert out == expected


def test_missing_arguments_are_reported():
  result = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'local.sh')], capture_output=True,
                          text=True)
  assert result.returncode != 0 and 'usage: launch/local.sh CONFIG WORKDIR' in result.stderr


def test_seeds_script_trains_plain_and_dsop_per_subset_and_seed_then_plots_them():
  out = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'seeds.sh'), 'configs/quickstart.py',
                        '/tmp/o', '1 2', '--config.train.num_epochs=1'],
                       env={**os.environ, 'DRY_RUN': '1', 'SUBSETS': '0 3'}, capture_output=True,
                       text=True, check=True).stdout.strip().splitlines()
  train = ('python -m dsop_jax.main --config=configs/quickstart.py '
           '--workdir=/tmp/o/{0}_subset{1}_seed{2} --config.train.seed={2} '
           '--config.data.train_subset_seed={1} --config.train.num_epochs=1')
  expected = [train.format(name, subset, seed) + plain for subset in (0, 3) for seed in (1, 2)
              for name, plain in (('plain', ' --config.model.branches.pattern='), ('dsop', ''))]
  assert out[:8] == expected
  assert out[8] == ('python -m dsop_jax.plot ' + ' '.join(
      f'--workdir=/tmp/o/{name}_subset{subset}_seed{seed}' for subset in (0, 3) for seed in (1, 2)
      for name in ('plain', 'dsop')) + ' --output=/tmp/o/curves.png --pairs_output=/tmp/o/pairs.png'
      ' --table=/tmp/o/table.md')
  assert len(out) == 9
