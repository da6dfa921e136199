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


def test_seeds_script_trains_plain_and_dsop_per_seed_then_plots_them():
  out = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'seeds.sh'), 'configs/quickstart.py',
                        '/tmp/o', '1 2', '--config.train.num_epochs=1'],
                       env={**os.environ, 'DRY_RUN': '1'}, capture_output=True, text=True,
                       check=True).stdout.strip().splitlines()
  train = 'python -m dsop_jax.main --config=configs/quickstart.py --workdir=/tmp/o/{}_seed{} ' \
          '--config.train.seed={} --config.train.num_epochs=1'
  assert out[:4] == [train.format('plain', 1, 1) + ' --config.model.branches.pattern=',
                     train.format('dsop', 1, 1),
                     train.format('plain', 2, 2) + ' --config.model.branches.pattern=',
                     train.format('dsop', 2, 2)]
  assert out[4] == ('python -m dsop_jax.plot --workdir=/tmp/o/plain_seed1 --workdir=/tmp/o/dsop_seed1 '
                    '--workdir=/tmp/o/plain_seed2 --workdir=/tmp/o/dsop_seed2 '
                    '--output=/tmp/o/curves.png --table=/tmp/o/table.md')
  assert len(out) == 5
