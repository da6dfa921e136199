"""The documentation stands on its own and runs: every relative link of README.md, BENCHMARKS.md
and docs/ points to a file inside the repository (a published copy has nothing beside it), every
`python -m dsop_jax.X` module they run exists, and every `--config=...` command they show builds
the config it names, with every override an existing field of the right type."""

import glob
import importlib.util
import os
import re

import pytest

from dsop_jax import models
from dsop_jax import optim
from tests import doc_commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md', 'BENCHMARKS.md'] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))


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
    models.validate_model_config(config.model)
    optim.validate_optim_config(config)
    assert not doc_commands.unreached_decays(config), (
        f'{command.where}: {command.argv()} decays the rate past its {config.train.num_epochs} '
        'epochs')
