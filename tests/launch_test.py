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
     'gcloud compute tpus tpu-vm ssh pod --zone=z --worker=all --command=cd ~/dsop_jax && python -m '
     'dsop_jax.main --distributed --config=configs/quickstart.py --workdir=/tmp/w '
     '--config.train.num_epochs=1'),
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
