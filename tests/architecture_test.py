"""The package's import graph: imports run one way (entry points -> train -> export/plot -> runs ->
steps -> models -> layers), with no cycle and no import inside a function that dodges one, and the
pure steps reach neither TensorFlow nor clu (accelerator hosts run them without either)."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'dsop_jax')
# Each module may import only modules of a lower layer; its own layer's modules where listed.
LAYERS = [
    {'main', 'benchmark'},
    {'train', 'complexity', 'predict'},
    {'export', 'plot', 'gradients', 'pretrained'},
    {'runs'},
    {'steps'},
    {'checkpointing', 'input_pipeline', 'torch_weights'},
    {'models'},
    {'dsop', 'gsop', 'efficientnet', 'cifar_backbones', 'losses', 'optim', 'sharding'},
    {'branches', 'resnet'},
    {'covpool', 'layers', 'stages', 'config_files', 'onnx_export', 'datasets'},
    {'image_files', 'paths'},
]
SAME_LAYER = {('gsop', 'branches'), ('dsop', 'branches'), ('cifar_backbones', 'resnet'),
              ('efficientnet', 'resnet'), ('branches', 'covpool'), ('losses', 'optim'),
              ('optim', 'dsop'), ('pretrained', 'export')}
# Imported where used because they need TensorFlow, which accelerator hosts may not have (the
# benchmark's `input` part only).
OPTIONAL = {('benchmark', 'input_pipeline'), ('benchmark', 'datasets')}


def _imports(name):
  """{imported module: whether it is imported at module level} for dsop_jax/NAME.py, every module
  (dsop_jax's by their short name) found anywhere in its code."""
  with open(os.path.join(PACKAGE, f'{name}.py')) as f:
    tree = ast.parse(f.read())
  top_level = {id(node) for node in tree.body}
  found = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == 'dsop_jax':
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module]
    elif isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    else:
      continue
    for imported in names:
      found[imported] = found.get(imported, False) or id(node) in top_level
  return found


MODULES = sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith('.py') and f != '__init__.py')
LAYER = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def test_every_module_has_a_layer():
  assert sorted(LAYER) == MODULES


@pytest.mark.parametrize('name', MODULES)
def test_imports_run_downwards_and_only_at_module_level(name):
  ours = {m: top for m, top in _imports(name).items() if m in LAYER}
  inside = sorted(m for m, top in ours.items() if not top and (name, m) not in OPTIONAL)
  assert not inside, f'dsop_jax/{name}.py imports {inside} inside a function'
  upward = sorted(m for m in ours if LAYER[m] < LAYER[name] or (
      LAYER[m] == LAYER[name] and (name, m) not in SAME_LAYER))
  assert not upward, (f'dsop_jax/{name}.py (layer {LAYER[name]}) imports {upward} from its layer '
                      'or above')


def test_the_steps_reach_neither_tensorflow_nor_clu():
  reached, frontier = set(), ['steps']
  while frontier:
    name = frontier.pop()
    reached.add(name)
    frontier += [m for m in _imports(name) if m in LAYER and m not in reached]
  heavy = {(name, m) for name in reached for m in _imports(name)
           if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'clu')}
  assert not heavy, heavy


# Older JAX APIs and what the package uses instead.
OLD_APIS = {'jax.tree_util.tree_': 'jax.tree.*', 'jax.random.PRNGKey(': 'jax.random.key',
            'Mesh(np.': 'jax.make_mesh (sharding.create_mesh)'}


@pytest.mark.parametrize('name', MODULES)
def test_current_jax_apis(name):
  with open(os.path.join(PACKAGE, f'{name}.py')) as f:
    source = f.read()
  old = {api: new for api, new in OLD_APIS.items() if api in source}
  assert not old, f'dsop_jax/{name}.py uses {sorted(old)}; use {sorted(old.values())}'


def test_the_mesh_has_one_auto_data_axis_over_every_device():
  import jax  # pylint: disable=g-import-not-at-top
  from dsop_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.create_mesh()
  assert mesh.axis_names == (sharding.DATA_AXIS,) == ('data',)
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
