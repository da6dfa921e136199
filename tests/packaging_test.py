"""The installed package: its console scripts run from any directory, a config file given by path
finds its shared base beside it (no repository root on sys.path), and its dependencies install on
each platform. Needs `pip install -e .`, as the README's install and CI do."""

import json
import os
import subprocess
import sys
import tomllib

from packaging import requirements
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_console_script_runs_from_another_directory_with_a_config_by_path(tmp_path):
  script = os.path.join(os.path.dirname(sys.executable), 'dsop-complexity')
  assert os.path.exists(script), f'{script} is missing: install the package (pip install -e .)'
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  done = subprocess.run([script, f'--config={ROOT}/configs/imagenet_r18.py', '--json'],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report['params_test'] == 11_689_512  # torchvision's ResNet-18.
  assert sorted(report['branches']) == ['a_pds2', 'a_pds3', 'a_pds4', 'a_pds5']


def test_every_console_script_is_installed_and_its_flags_documented():
  """pyproject.toml's scripts are installed beside the interpreter and are the entry points whose
  documented flags docs_test checks (run from another directory there)."""
  from tests import doc_commands  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    scripts = tomllib.load(f)['project']['scripts']
  assert {name: target.split(':')[0] for name, target in scripts.items()} == doc_commands.SCRIPTS
  assert all(target.endswith(':cli') for target in scripts.values())
  for name in scripts:
    assert os.path.exists(os.path.join(os.path.dirname(sys.executable), name)), name


@pytest.mark.parametrize('platform, machine, expected', [
    ('linux', 'x86_64', 'tensorflow-cpu'), ('linux', 'aarch64', 'tensorflow'),
    ('darwin', 'arm64', 'tensorflow'), ('win32', 'AMD64', 'tensorflow')])
def test_one_tensorflow_wheel_per_platform(platform, machine, expected):
  """tensorflow-cpu has no macOS or arm64 wheels: the environment markers pick one that exists."""
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    dependencies = [requirements.Requirement(r) for r in tomllib.load(f)['project']['dependencies']]
  environment = {'sys_platform': platform, 'platform_machine': machine}
  picked = [r.name for r in dependencies if r.name in ('tensorflow', 'tensorflow-cpu')
            and (r.marker is None or r.marker.evaluate(environment))]
  assert picked == [expected]
