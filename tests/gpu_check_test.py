"""launch/gpu_check.sh on the CPU (--quick), on a host as bare as the GPU hosts: TensorFlow, tfds,
clu and the installed ml_collections cannot be imported, only the ml_collections that --bundle
copied beside the checkout."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'launch', 'gpu_check.sh')

# Loaded by every Python of the subprocess (PYTHONPATH): imports of these packages fail, except
# ml_collections from the bundle ($GPU_DEPS).
_BARE_HOST = '''
import importlib.abc, importlib.machinery, os, sys
_BLOCKED = ('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections')

class _NotOnThisHost(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    top = name.partition('.')[0]
    if top not in _BLOCKED:
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if top == 'ml_collections' and spec and (spec.origin or '').startswith(os.environ['GPU_DEPS']):
      return None
    raise ModuleNotFoundError(f'No module named {name!r} on this host', name=name)

sys.meta_path.insert(0, _NotOnThisHost())
'''


def _run(tmp_path, *args, deps):
  hooks = tmp_path / 'hooks'
  hooks.mkdir(exist_ok=True)
  (hooks / 'sitecustomize.py').write_text(_BARE_HOST)
  env = {**os.environ, 'PYTHON': sys.executable, 'GPU_DEPS': str(deps),
         'PYTHONPATH': str(hooks)}
  return subprocess.run(['bash', SCRIPT, *args], env=env, capture_output=True, text=True,
                        timeout=600)


def test_without_ml_collections_the_check_says_what_to_do(tmp_path):
  result = _run(tmp_path, '--quick', deps=tmp_path / 'none')
  assert result.returncode == 1
  assert 'needs ml_collections' in result.stderr and 'gpu_check.sh --bundle' in result.stderr


def test_quick_check_on_a_bare_host(tmp_path):
  deps = tmp_path / 'deps'
  bundle = subprocess.run(['bash', SCRIPT, '--bundle'], env={
      **os.environ, 'PYTHON': sys.executable, 'GPU_DEPS': str(deps)}, capture_output=True,
                          text=True, check=True)
  assert (deps / 'ml_collections' / '__init__.py').exists(), bundle.stdout
  output = tmp_path / 'summary.json'
  result = _run(tmp_path, '--quick', f'--output={output}', deps=deps)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary == json.loads(output.read_text())
  assert summary['versions']['ml_collections_from'].startswith(str(deps))
  assert summary['device']['platform'] == 'cpu' and summary['quick'] and summary['ok']
  s1, s2 = summary['benchmark_r50_s1'], summary['benchmark_r50_s2_plain']
  assert s1['model'] == s2['model'] == 'resnet50'
  assert summary['last_stride'] == {'r50_s1': 1, 'r50_s2': 2}
  assert set(s1['train']) == {'plain', 'dsop', 'peak_tflops', 'step_time_ratio', 'xla_flops_ratio',
                              'forward_macs_ratio'}
  assert sorted(s2['train']) == ['peak_tflops', 'plain']  # The plain network alone.
  assert s1['inference']['same_program']
  assert list(s1['pooling']['branches']) == ['a_pds5']
  for name, heads in (('plain_r50_s2', 1), ('dsop_r50_s1', 2)):
    run = summary['training'][name]
    assert run['heads'] == heads and run['steps'] == len(run['losses']) == 20
    assert run['loss_fell'] and run['last_tenth_loss'] < 0.5 * run['first_tenth_loss']
  assert set(summary['targets']) == {
      'plain_r50_s2_images_per_s', 'dsop_over_plain_r50_s1_step_time',
      'max_isqrt_cov_share_of_branch', 'detached_over_plain_inference'}
  assert summary['wall_s'] >= sum(summary['phase_s'].values()) > 0
