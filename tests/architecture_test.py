"""The package's shape: subpackages are layers and imports run one way between them (models and data
at the bottom, then deploy, training, tools, and the command lines at the top), with no cycle inside
a layer and no import inside a function that dodges a rule; the deploy path loads no TensorFlow,
Keras, scikit-learn or clu; the pure steps reach neither TensorFlow nor clu."""

import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'dsop_jax')
BASE = ('paths', 'config_files')  # Top-level modules that every layer may import.
# What each layer may import of dsop_jax besides itself and BASE. Top-level modules that are not
# BASE are the command lines, which may import anything but one another.
MAY_IMPORT = {
    'models': set(),
    'data': set(),
    'deploy': {'models'},
    'training': {'models', 'data', 'deploy'},
    'tools': {'models', 'data', 'deploy', 'training'},
}
# Imported where used because they need TensorFlow, which accelerator hosts may not have (the
# benchmark's `input` part only).
OPTIONAL = {('tools.benchmark', 'data.input_pipeline'), ('tools.benchmark', 'data.datasets'),
            # The schema of saved configs, imported when one is read (config_files.upgrade says why).
            ('config_files', 'configs.common')}


def modules(package: str = PACKAGE):
  """{'models.covpool': path, 'main': path, ...} for every module of the package."""
  found = {}
  for folder, _, files in os.walk(package):
    for f in files:
      if f.endswith('.py') and f != '__init__.py':
        rel = os.path.relpath(os.path.join(folder, f[:-3]), package)
        found[rel.replace(os.sep, '.')] = os.path.join(folder, f)
  return found


def imports(path: str):
  """{imported dsop_jax module ('training.steps', 'paths'): whether at module level}."""
  with open(path) as f:
    tree = ast.parse(f.read())
  top_level = {id(node) for node in tree.body}
  found = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('dsop_jax'):
      prefix = node.module[len('dsop_jax'):].lstrip('.')
      names = [f'{prefix}.{a.name}' if prefix else a.name for a in node.names]
    elif isinstance(node, ast.Import):
      names = [a.name[len('dsop_jax.'):] for a in node.names if a.name.startswith('dsop_jax.')]
    else:
      continue
    for name in names:
      found[name] = found.get(name, False) or id(node) in top_level
  return found


def layer(module: str) -> str:
  return module.split('.')[0] if '.' in module else module


def violations(package: str = PACKAGE):
  """Every broken rule, as readable lines (empty when the package keeps them all)."""
  found, graph = [], {}
  for module, path in sorted(modules(package).items()):
    ours = imports(path)
    graph[module] = {m for m in ours if layer(m) == layer(module) and '.' in module}
    for imported, top in sorted(ours.items()):
      if not top and (module, imported) not in OPTIONAL:
        found.append(f'{module} imports {imported} inside a function')
      if layer(imported) in BASE or (layer(imported) == layer(module) and '.' in module):
        continue
      if (module, imported) in OPTIONAL:
        continue
      if '.' not in module:  # A base module imports nothing; a command line no other one.
        if module in BASE or '.' not in imported:
          found.append(f'{module} imports {imported}')
      elif layer(imported) not in MAY_IMPORT[layer(module)]:
        found.append(f'{module} ({layer(module)}) imports {imported} ({layer(imported)}): '
                     f'{layer(module)} may import only {sorted(MAY_IMPORT[layer(module)])}')
  state = {}

  def visit(module, trail):
    if state.get(module) == 'done':
      return
    if state.get(module) == 'open':
      found.append('import cycle: ' + ' -> '.join(trail[trail.index(module):] + [module]))
      return
    state[module] = 'open'
    for imported in sorted(graph.get(module, ())):
      visit(imported, trail + [module])
    state[module] = 'done'

  for module in sorted(graph):
    visit(module, [])
  return found


def test_every_module_sits_in_a_layer():
  for module in modules():
    assert layer(module) in MAY_IMPORT or '.' not in module, module
  assert {layer(m) for m in modules() if '.' in m} == set(MAY_IMPORT)


def test_imports_run_one_way_between_layers_with_no_cycle():
  assert violations() == []


@pytest.mark.parametrize('plant, expected', [
    ('models/covpool.py', 'models.covpool (models) imports training.steps (training)'),
    ('data/datasets.py', 'data.datasets (data) imports training.steps (training)'),
    ('deploy/artifact.py', 'deploy.artifact (deploy) imports training.steps (training)'),
])
def test_a_planted_violation_is_found(tmp_path, plant, expected):
  copy = tmp_path / 'dsop_jax'
  shutil.copytree(PACKAGE, copy)
  with open(copy / plant, 'a') as f:
    f.write('\nfrom dsop_jax.training import steps  # noqa\n')
  assert [v for v in violations(str(copy)) if v.startswith(expected)]


def test_a_planted_cycle_is_found(tmp_path):
  copy = tmp_path / 'dsop_jax'
  shutil.copytree(PACKAGE, copy)
  with open(copy / 'models' / 'layers.py', 'a') as f:
    f.write('\nfrom dsop_jax.models import resnet  # noqa\n')
  assert any(v.startswith('import cycle:') and 'models.layers' in v for v in violations(str(copy)))


def test_command_lines_are_thin():
  """Each command line module holds flags and one library call: at most 80 lines."""
  for module, path in modules().items():
    if '.' not in module and module not in BASE:
      with open(path) as f:
        assert len(f.read().splitlines()) <= 80, f'dsop_jax/{module}.py is not a thin entry point'


HEAVY = ('tensorflow', 'tensorflow_datasets', 'keras', 'tf_keras', 'sklearn', 'clu')
_DEPLOY_IMPORTS = """
import sys
import dsop_jax.deploy.onnx_export, dsop_jax.deploy.torch_weights
import dsop_jax.predict, dsop_jax.deploy.predict, dsop_jax.deploy.artifact
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy})
assert not heavy, heavy[:20]
"""


def test_the_deploy_path_loads_no_tensorflow_keras_sklearn_or_clu():
  subprocess.run([sys.executable, '-c', _DEPLOY_IMPORTS.format(heavy=set(HEAVY))], check=True,
                 cwd=ROOT)


def test_the_steps_reach_neither_tensorflow_nor_clu():
  all_modules = modules()
  reached, frontier = set(), ['training.steps']
  while frontier:
    name = frontier.pop()
    reached.add(name)
    frontier += [m for m in imports(all_modules[name]) if m in all_modules and m not in reached]
  heavy = set()
  for name in reached:
    with open(all_modules[name]) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
               [a.name for a in node.names] if isinstance(node, ast.Import) else [])
      heavy |= {(name, n) for n in names if n.split('.')[0] in HEAVY}
  assert not heavy, heavy


# Older JAX APIs and what the package uses instead.
OLD_APIS = {'jax.tree_util.tree_': 'jax.tree.*', 'jax.random.PRNGKey(': 'jax.random.key',
            'Mesh(np.': 'jax.make_mesh (sharding.create_mesh)'}


def sources_to_keep_current():
  """{'dsop_jax/models/covpool.py': path, 'tests/train_test.py': path, ...}: the package, its
  configs and tests (but this file, which names the old APIs)."""
  found = {os.path.relpath(path, ROOT): path for path in modules().values()}
  for folder in ('configs', 'tests', 'launch'):
    for f in sorted(os.listdir(os.path.join(ROOT, folder))):
      path = os.path.join(ROOT, folder, f)
      if f.endswith('.py') and path != os.path.abspath(__file__):
        found[os.path.relpath(path, ROOT)] = path
  return found


@pytest.mark.parametrize('name', sorted(sources_to_keep_current()))
def test_current_jax_apis(name):
  with open(sources_to_keep_current()[name]) as f:
    source = f.read()
  old = {api: new for api, new in OLD_APIS.items() if api in source}
  assert not old, f'{name} uses {sorted(old)}; use {sorted(old.values())}'


def test_no_top_level_configs_package_is_installed(tmp_path):
  """The configs install as dsop_jax.configs; a top-level `configs` is not importable from
  another directory."""
  code = ('import importlib.util, dsop_jax.configs.quickstart as q; '
          'assert importlib.util.find_spec("configs") is None; print(q.get_config().model.name)')
  out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True,
                       cwd=str(tmp_path))
  assert out.stdout.strip() == 'preact_resnet20'


def test_the_mesh_has_one_auto_data_axis_over_every_device():
  import jax  # pylint: disable=g-import-not-at-top
  from dsop_jax.training import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.create_mesh()
  assert mesh.axis_names == (sharding.DATA_AXIS,) == ('data',)
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
