"""The documentation stands on its own and runs: every relative link of README.md and docs/ points
to a file inside the repository (a published copy has nothing beside it), every file path they
name exists, the layout page names every module of the package, every `python -m dsop_jax.X`
module they run exists, every `--config=...` command they show builds the config it names with
every override an existing field of the right type, and every command line's flags are its entry
point's own."""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

from dsop_jax.models import registry
from dsop_jax.training import optim
from tests import doc_commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


@pytest.mark.parametrize('page', PAGES)
def test_relative_links_stay_inside_the_repository(page):
  with open(os.path.join(ROOT, page)) as f:
    text = f.read()
  targets = [t.split('#')[0] for t in re.findall(r'\]\(([^)\s]+)\)', text)
             if not re.match(r'[a-z]+:', t) and not t.startswith('#')]
  assert targets or page != 'README.md'
  for target in targets:
    path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))
    assert path.startswith(ROOT + os.sep) and os.path.exists(path), f'{page} links to {target}'
  assert '../shared' not in text, f'{page} refers to ../shared, outside the repository'


@pytest.mark.parametrize('page', PAGES)
def test_documented_commands_build_and_their_modules_exist(page):
  """Each command's config builds as `python -m dsop_jax.main` would parse it and validates, its
  step schedule decays within its epochs; each module run with `python -m` exists."""
  with open(os.path.join(ROOT, page)) as f:
    text = f.read()
  for module in doc_commands.modules(text):
    assert importlib.util.find_spec(module) is not None, f'{page} runs {module}, which does not exist'
  for command in doc_commands.commands(text, page):
    config = doc_commands.build(command)
    registry.validate_model_config(config.model)
    optim.validate_optim_config(config)
    assert not doc_commands.unreached_decays(config), (
        f'{command.where}: {command.argv()} decays the rate past its {config.train.num_epochs} '
        'epochs')


def _documented_invocations():
  found = []
  for page in PAGES:
    with open(os.path.join(ROOT, page)) as f:
      found += doc_commands.invocations(f.read(), page)
  for path in CONFIGS:
    with open(path) as f:
      found += doc_commands.invocations(f.read(), os.path.relpath(path, ROOT))
  return found


def flag_problems(found):
  """Each documented command line's flags checked against its entry point's own flags, in one
  subprocess started in another directory than the repository (as users run them)."""
  by_module = {}
  for invocation in found:
    by_module.setdefault(invocation.module, []).append((invocation.where, invocation.flags))
  done = subprocess.run(
      [sys.executable, '-c', doc_commands.FLAG_CHECK, json.dumps(by_module),
       os.path.dirname(os.path.abspath(doc_commands.__file__))],
      capture_output=True, text=True, cwd=tempfile.mkdtemp(), timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_documented_command_lines_accept_their_flags():
  """Every `python -m dsop_jax.X` and `dsop-*` command of README.md, docs/ and the config
  docstrings names flags its entry point defines, with values it accepts (placeholders such as DIR
  aside); every entry point and console script is documented somewhere."""
  found = _documented_invocations()
  assert {i.module for i in found} == set(doc_commands.SCRIPTS.values())
  assert len(found) > 40
  assert flag_problems(found) == []


def test_a_misspelt_or_mistyped_flag_is_found():
  """The check above fails on a documented flag that does not exist or whose value is refused."""
  text = ('python -m dsop_jax.predict --export_dir=OUT photo.png --top_kk=3\n'
          'dsop-predict --export_dir=OUT --format=onnx x.png\n'
          '`python -m dsop_jax.predict --export_dir=OUT --format=tiff x.png`\n'
          'dsop-predict --export_dir=OUT --top_k=three x.png\n')
  problems = flag_problems(doc_commands.invocations(text, 'planted.md'))
  assert len(problems) == 3, problems
  assert 'planted.md:1: dsop_jax.predict has no flag --top_kk' in problems
  assert any(p.startswith('planted.md:3: --format=tiff is refused') for p in problems)
  assert any(p.startswith('planted.md:4: --top_k=three is refused') for p in problems)


@pytest.mark.parametrize('line', [
    'python -m dsop_jax.main --config=configs/quickstart.py --config.train.batch_sise=32',
    'python -m dsop_jax.main --config=configs/quickstart.py --config.train.batch_size=many',
    'python -m dsop_jax.main --config=configs/quickstart.py:foo --workdir=/tmp/q',
    'python -m dsop_jax.main --config=configs/quickstart_r7.py --workdir=/tmp/q'])
def test_a_command_whose_config_does_not_build_is_found(line):
  """A documented override naming no field, a value of the wrong type, an option the config does
  not take, or a config that does not exist: building the command fails, as it would for a user."""
  (command,) = doc_commands.commands(line, 'planted.md')
  with pytest.raises(Exception):
    doc_commands.build(command)


def test_the_api_pages_code_runs():
  """docs/api.md's example, on one block per stage at 64x64 (the names it uses exist and do what
  it says: detached variables build the plain network, every head and Eq. 1's terms come back)."""
  with open(os.path.join(ROOT, 'docs', 'api.md')) as f:
    code = f.read().split('```python\n')[1].split('```')[0]
  small = code.replace('config = imagenet_r50.get_config()',
                       'config = imagenet_r50.get_config()\nconfig.model.stage_sizes = (1, 1, 1, 1)')
  small = small.replace('(2, 224, 224, 3)', '(2, 64, 64, 3)')
  assert small.count('stage_sizes') == 1 and '64, 64' in small
  scope = {}
  exec(compile(small, 'docs/api.md', 'exec'), scope)  # pylint: disable=exec-used
  assert sorted(scope['out']['aux_logits']) == ['a_pds2', 'a_pds3', 'a_pds4', 'a_pds5',
                                                'a_pds5_psdr1']
  assert scope['logits'].shape == (2, 1000) and 'stage5' in scope['features']
  assert set(scope['terms']) >= {'logits', 'a_pds2'}


RESULTS = os.path.join(ROOT, 'docs', 'results.md')
SUBSET_RUNS = os.path.join(ROOT, 'docs', 'results', 'fashion_mnist_subsets')


def _pairs_table(text):
  """[(subset, seed, plain %, DSoP %, gain)] of results.md's Fashion-MNIST pairs table."""
  rows = re.findall(r'^\| (\d+) \| (\d+) \| (\d+\.\d\d) \| (\d+\.\d\d) \| ([+-]\d+\.\d\d) \| \w+ \|$',
                    text, re.M)
  return [(int(a), int(b), float(c), float(d), float(e)) for a, b, c, d, e in rows]


def test_the_results_pages_gains_and_interval_are_its_tables():
  """docs/results.md's Fashion-MNIST pairs: each gain is its row's plain minus DSoP error; the
  mean, standard deviation, 95% t-interval and count ahead written under the table are the
  table's; the rows of the runs kept in docs/results/ are what those runs' metrics say."""
  import statistics  # pylint: disable=g-import-not-at-top
  from dsop_jax.tools import plot  # pylint: disable=g-import-not-at-top
  with open(RESULTS) as f:
    text = f.read()
  rows = _pairs_table(text)
  assert len(rows) >= 9 and len({(r[0], r[1]) for r in rows}) == len(rows), rows
  for subset, seed, plain, dsop, gain in rows:
    assert round(plain - dsop, 2) == gain, (subset, seed)
  gains = [r[4] for r in rows]
  low, high = plot.t_interval(gains)
  claim = (f'Over these {len(gains)} pairs the mean gain is {statistics.mean(gains):+.2f} points, '
           f'standard deviation {statistics.stdev(gains):.2f}, 95% t-interval\n[{low:+.2f}, '
           f'{high:+.2f}]')
  assert claim in text
  ahead = sum(g > 0 for g in gains)
  assert f'DSoP-Net was ahead in {ahead} of the {len(gains)}' in text
  kept = plot.load_runs(sorted(glob.glob(os.path.join(SUBSET_RUNS, '*'))))
  matched = plot.pairs(kept)
  assert len(matched) == len(kept) // 2 >= 3
  for plain_run, dsop_run in matched:
    row = (plain_run.subset, plain_run.seed, round(plain_run.final_error, 2),
           round(dsop_run.final_error, 2))
    assert row in [r[:4] for r in rows], row
