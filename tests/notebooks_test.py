"""The notebooks run top to bottom in a fresh Jupyter kernel, started in notebooks/ as a user would:
quickstart in its smoke mode (its quick mode on one block per stage and 192 training digits),
dsop_anatomy in its quick (CPU) mode, reproduce_cifar and imagenet_eval in their mock mode (TFDS's
mock data instead of CIFAR and ImageNet; their runs are the tests of training on mocked cifar10 and
imagenet2012). Each test checks what its notebook must show, and that the committed notebooks carry
a Colab badge and no stored outputs."""

import json
import os

import nbclient
import nbformat
import numpy as np
import pytest

from dsop_jax.models import registry
from dsop_jax.training import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, 'notebooks')
MODES = {'quickstart': 'smoke', 'dsop_anatomy': 'quick', 'reproduce_cifar': 'mock',
         'imagenet_eval': 'mock'}
# Notebooks whose full mode needs the user's data (imagenet_eval) or two 110-epoch runs
# (reproduce_cifar) default to a mode that runs as opened on any runtime.
FIXED_DEFAULTS = {'reproduce_cifar': 'quick', 'imagenet_eval': 'mock'}


def _run(name, tmp_path, monkeypatch):
  """Executes notebooks/NAME.ipynb; returns (text of every output, names of displayed formats)."""
  monkeypatch.setenv('DSOP_NOTEBOOK_MODE', MODES[name])
  monkeypatch.setenv('DSOP_NOTEBOOK_DIR', str(tmp_path))
  notebook = nbformat.read(os.path.join(NOTEBOOKS, f'{name}.ipynb'), as_version=4)
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': NOTEBOOKS}}).execute()
  texts, formats = [], []
  for cell in notebook.cells:
    for output in cell.get('outputs', []):
      texts.append(output.get('text', ''))
      texts.append(output.get('data', {}).get('text/markdown', ''))
      texts.append(output.get('data', {}).get('text/plain', ''))
      formats += list(output.get('data', {}))
  return '\n'.join(texts), formats


def test_quickstart_trains_plots_exports_and_classifies(tmp_path, monkeypatch):
  text, formats = _run('quickstart', tmp_path, monkeypatch)
  out = tmp_path / 'quickstart' / 'smoke'
  for run in ('plain', 'dsop'):
    with open(out / run / 'metrics.jsonl') as f:
      assert [json.loads(line)['epoch'] for line in f] == [1.0, 2.0]
  assert (out / 'curves.png').stat().st_size > 0 and (out / 'examples.png').stat().st_size > 0
  assert formats.count('image/png') == 2
  assert '| preact_resnet20 + DSoP (3 branches) | a_pds3_1 |' in text
  assert 'of 16 right' in text and 'test top-1: exported' in text
  # The exported network has exactly the plain run's parameter count.
  counts = text.split('parameters: trained DSoP-Net')[1].split('\n')[0].split('|')
  assert counts[1].split()[-1] == counts[2].split()[-1]


def test_dsop_anatomy_tables_detach_and_covariance(tmp_path, monkeypatch):
  text, formats = _run('dsop_anatomy', tmp_path, monkeypatch)
  assert text.count('logits bit-identical: True') == 2
  assert '| ResNet-18-s1 + DSoP | 100.49M | 100.6M | 11.69M | 11.7M |' in text
  assert '| a_pds5 | stage5 | 3 | psdr | 256 | 32896 |' in text  # ResNet-50's PSDR branch.
  assert (tmp_path / 'dsop_anatomy' / 'quick' / 'covariance.png').stat().st_size > 0
  assert 'image/png' in formats


@pytest.mark.parametrize('name, picture, workdirs', [
    ('reproduce_cifar', 'cifar_resnet20_cifar10.png',
     ['cifar_resnet20_cifar10_plain', 'cifar_resnet20_cifar10_dsop']),
    ('imagenet_eval', 'predictions.png', ['run'])])
def test_mock_mode_runs_every_cell(tmp_path, monkeypatch, name, picture, workdirs):
  """Each mock run trains 2 steps on mocked TFDS data (64 examples) and evaluates every head of its
  config once, at the end, with finite losses."""
  text, formats = _run(name, tmp_path, monkeypatch)
  out = tmp_path / name / 'mock'
  assert (out / picture).stat().st_size > 0
  assert 'image/png' in formats and '| paper' in text
  for workdir in workdirs:
    with open(out / workdir / 'metrics.jsonl') as f:
      (record,) = [json.loads(line) for line in f]
    assert record['step'] == 2
    heads = set(registry.head_names(runs.workdir_config(str(out / workdir)).model))
    assert set(record['eval']) == set(record['train']) == heads
    assert len(heads) == (1 if workdir.endswith('plain') else 4 if name == 'reproduce_cifar' else 3)
    assert all(np.isfinite(m['loss']) for m in record['eval'].values())


@pytest.mark.parametrize('name', sorted(MODES))
def test_committed_notebooks_open_with_a_colab_badge_and_hold_no_outputs(name):
  notebook = nbformat.read(os.path.join(NOTEBOOKS, f'{name}.ipynb'), as_version=4)
  nbformat.validate(notebook)
  assert (f'https://colab.research.google.com/github/dsop-jax/dsop_jax/blob/main/notebooks/'
          f'{name}.ipynb') in notebook.cells[0].source
  # Installed with pip from REPO_URL where dsop_jax is not importable; no clone, no chdir.
  setup = notebook.cells[1].source
  assert "f'git+{REPO_URL}'" in setup and setup.count('REPO_URL = ') == 1
  assert 'chdir' not in setup and 'git clone' not in setup
  for cell in notebook.cells:
    assert not cell.get('outputs') and not cell.get('execution_count'), cell.source[:60]
  # Opened on a GPU runtime, a notebook whose long modes need data or hours runs its short one.
  if name in FIXED_DEFAULTS:
    mode_cell = notebook.cells[2].source + notebook.cells[3].source
    assert f"os.environ.get('DSOP_NOTEBOOK_MODE') or {FIXED_DEFAULTS[name]!r}\n" in mode_cell
    assert 'default_backend' not in mode_cell
