"""The documentation stands on its own: every relative link of README.md, BENCHMARKS.md and docs/
points to a file inside the repository (a published copy has nothing beside it)."""

import glob
import os
import re

import pytest

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
