"""The one key table between dsop_jax's ImageNet networks and PyTorch's: torchvision's
`resnet18/34/50/101/152` and timm's `seresnext101_32x4d` and `efficientnet_b0` state dicts, used
both ways: exporting a detached network as a state dict that the stock model loads with
`load_state_dict(strict=True)` (`to_state_dict`), and initialising a network from one
(`from_state_dict`, `config.model.init_from`).

Each variable of the plain network maps to one state-dict key by renaming its module path
(`conv_init` -> `conv1`, `stage3_block2/proj_bn` -> `layer2.1.downsample.1`, `head` -> `fc`; the
timm EfficientNet's `blocks.S.B.conv_pw` ...) and one layout rule: a convolution kernel is HWIO here
and OIHW in PyTorch, a dense kernel (in, out) here and (out, in) there, a squeeze-and-excitation
dense layer is a biased 1x1 convolution there; BatchNorm's scale/bias/mean/var are
weight/bias/running_mean/running_var, and PyTorch adds each BatchNorm's `num_batches_tracked`.
The architectures are the same (resnet.py, efficientnet.py say how), so converted weights compute
the same function; tests/torch_weights_test.py checks it against torchvision's own logits.

Weights travel as safetensors files (the `safetensors` library, without torch): nothing is ever
unpickled. float32, float16 and bfloat16 state dicts load.
"""

import contextlib
import functools
import json
import re
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import jax
import ml_collections
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from dsop_jax import paths
from dsop_jax.models import registry

# dsop_jax model name -> (library, the constructor a user calls there).
LIBRARIES: Dict[str, Tuple[str, str]] = {
    **{f'resnet{d}': ('torchvision', f'torchvision.models.resnet{d}(num_classes={{n}})')
       for d in (18, 34, 50, 101, 152)},
    'seresnext101_32x4d': ('timm', "timm.create_model('seresnext101_32x4d', num_classes={n})"),
    'efficientnet_b0': ('timm', "timm.create_model('efficientnet_b0', num_classes={n})"),
}
BN_COUNTER = 'num_batches_tracked'
_BN_LEAVES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
_STAGE_BLOCK = re.compile(r'^stage(\d+)_block(\d+)$')
_RESNET_TOP = {'conv_init': 'conv1', 'bn_init': 'bn1', 'head': 'fc'}
_RESNET_INNER = {'proj_conv': 'downsample.0', 'proj_bn': 'downsample.1'}
_EFFNET_TOP = {'stem_conv': 'conv_stem', 'stem_bn': 'bn1', 'head_conv': 'conv_head',
               'head_bn': 'bn2', 'head': 'classifier'}
# timm numbers an MBConv's layers by position: with an expansion conv the depthwise BN is bn2 and
# the projection conv_pwl/bn3; without one (stage 1) they are bn1 and conv_pw/bn2.
_EFFNET_EXPANDED = {'expand_conv': 'conv_pw', 'expand_bn': 'bn1', 'dw_conv': 'conv_dw',
                    'dw_bn': 'bn2', 'project_conv': 'conv_pwl', 'project_bn': 'bn3'}
_EFFNET_DEPTHWISE = {'dw_conv': 'conv_dw', 'dw_bn': 'bn1', 'project_conv': 'conv_pw',
                     'project_bn': 'bn2'}
_SE = {'resnet': {'fc1': 'se.fc1', 'fc2': 'se.fc2'},
       'efficientnet': {'fc1': 'se.conv_reduce', 'fc2': 'se.conv_expand'}}


def check_supported(model_config: ml_collections.ConfigDict, field: str) -> None:
  """Raises ValueError naming `field` when the network has no torchvision/timm counterpart."""
  if model_config.name not in LIBRARIES:
    raise ValueError(f'{field} is invalid for config.model.name = {model_config.name!r}: torchvision '
                     f'and timm weights exist for {", ".join(LIBRARIES)} only.')
  head = model_config.head
  if head.pool != 'gap':
    raise ValueError(f'{field} is invalid with config.model.head.pool = {head.pool!r}: the '
                     'second-order head has no torchvision/timm counterpart; only the '
                     'first-order network (gap) does.')


def key_table(model_config: ml_collections.ConfigDict
              ) -> List[Tuple[str, Tuple[str, ...], str]]:
  """[(state-dict key, variable path (collection, modules..., leaf), layout)] for every variable
  of the plain network of `model_config`, sorted by key with numbers in numeric order. Layouts: 'conv', 'dense', 'dense_as_conv' (a dense kernel
  that PyTorch holds as a 1x1 convolution), 'vector'."""
  check_supported(model_config, 'The torchvision/timm key table')
  family = 'efficientnet' if model_config.name.startswith('efficientnet') else 'resnet'
  params = abstract_variables(model_config)['params']
  table = []
  for module_path in _modules(params):
    prefix = _torch_prefix(family, module_path, params)
    leaves = _lookup(params, module_path)
    if 'scale' in leaves:  # BatchNorm.
      for leaf in ('scale', 'bias', 'mean', 'var'):
        collection = 'params' if leaf in ('scale', 'bias') else 'batch_stats'
        table.append((f'{prefix}.{_BN_LEAVES[leaf]}', (collection,) + module_path + (leaf,),
                      'vector'))
      continue
    kernel = leaves['kernel']
    layout = ('conv' if len(kernel.shape) == 4 else
              'dense_as_conv' if module_path[-2:-1] == ('se',) else 'dense')
    table.append((f'{prefix}.weight', ('params',) + module_path + ('kernel',), layout))
    if 'bias' in leaves:
      table.append((f'{prefix}.bias', ('params',) + module_path + ('bias',), 'vector'))
  return sorted(table, key=lambda entry: natural_key(entry[0]))


def natural_key(key: str) -> List[Any]:
  """Sort key putting 'layer1.2' before 'layer1.10'."""
  return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', key)]


def _modules(params: Mapping[str, Any], path: Tuple[str, ...] = ()) -> Iterator[Tuple[str, ...]]:
  """Paths of the modules that hold arrays directly."""
  for name, value in params.items():
    if isinstance(value, Mapping):
      if any(not isinstance(v, Mapping) for v in value.values()):
        yield path + (name,)
      yield from _modules(value, path + (name,))


def _lookup(tree: Mapping[str, Any], path: Tuple[str, ...]) -> Any:
  for name in path:
    tree = tree[name]
  return tree


def _torch_prefix(family: str, path: Tuple[str, ...], params: Mapping[str, Any]) -> str:
  """The PyTorch module name of dsop_jax module `path`."""
  top, inner = path[0], path[1:]
  match = _STAGE_BLOCK.match(top)
  if not match:
    names = _EFFNET_TOP if family == 'efficientnet' else _RESNET_TOP
    if top not in names or inner:
      raise ValueError(f'No torchvision/timm name for variable module {"/".join(path)!r}.')
    return names[top]
  stage, block = int(match.group(1)), int(match.group(2))
  if family == 'efficientnet':
    outer = f'blocks.{stage - 1}.{block - 1}'
    own = _EFFNET_EXPANDED if 'expand_conv' in params[top] else _EFFNET_DEPTHWISE
  else:
    outer = f'layer{stage - 1}.{block - 1}'  # torchvision's layer1 is the paper's stage 2.
    own = _RESNET_INNER
  if inner[0] == 'se' and len(inner) == 2:
    return f'{outer}.{_SE[family][inner[1]]}'
  if len(inner) != 1:
    raise ValueError(f'No torchvision/timm name for variable module {"/".join(path)!r}.')
  return f'{outer}.{own.get(inner[0], inner[0])}'


# layout -> (dsop_jax -> PyTorch, PyTorch -> dsop_jax) array maps.
_LAYOUTS: Dict[str, Tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    'conv': (lambda x: x.transpose(3, 2, 0, 1), lambda x: x.transpose(2, 3, 1, 0)),  # HWIO, OIHW.
    'dense': (lambda x: x.T, lambda x: x.T),
    'dense_as_conv': (lambda x: x.T[:, :, None, None], lambda x: x[:, :, 0, 0].T),
    'vector': (lambda x: x, lambda x: x),
}


def _to_torch_layout(x: np.ndarray, layout: str) -> np.ndarray:
  return np.ascontiguousarray(_LAYOUTS[layout][0](x))


def _from_torch_layout(x: np.ndarray, layout: str) -> np.ndarray:
  return np.ascontiguousarray(_LAYOUTS[layout][1](x))


def torch_shape(shape: Tuple[int, ...], layout: str) -> Tuple[int, ...]:
  """The PyTorch shape of a dsop_jax variable of `shape` stored with `layout`."""
  return _to_torch_layout(np.empty(shape, np.uint8), layout).shape


def to_state_dict(model_config: ml_collections.ConfigDict, variables: Mapping[str, Any], *,
                  batches_tracked: int = 0) -> Dict[str, np.ndarray]:
  """The PyTorch state dict (float32 NumPy arrays, each BatchNorm's int64 `num_batches_tracked`
  set to `batches_tracked`) of the plain network's `variables`."""
  state = {}
  for key, path, layout in key_table(model_config):
    state[key] = _to_torch_layout(np.asarray(_lookup(variables, path), np.float32), layout)
    if path[-1] == 'var':
      state[f'{key.rsplit(".", 1)[0]}.{BN_COUNTER}'] = np.asarray(int(batches_tracked), np.int64)
  return state


def first_order(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`model_config` with the first-order head (GAP + FC) in place of a second-order one."""
  plain = ml_collections.ConfigDict(model_config.to_dict())
  plain.head.pool = 'gap'
  return plain


def from_state_dict(model_config: ml_collections.ConfigDict, state: Mapping[str, np.ndarray],
                    fresh: Mapping[str, Any], *, source: str) -> Tuple[Dict[str, Any], List[str]]:
  """The plain network's variables with a PyTorch state dict's weights.

  Args:
    model_config: the network's config.model.
    state: state-dict key -> array (PyTorch layouts).
    fresh: the network's freshly initialised {'params', 'batch_stats'}; what the state dict does
      not provide stays as it is here: the classifier when the state dict's has another number of
      classes (a fine-tuning dataset), a second-order head (its classifier is then unused).
    source: where `state` came from, for error messages.

  Returns:
    (variables, the names of the fresh parts kept).

  Raises:
    ValueError: a key the network needs is missing, a key is unexpected (`num_batches_tracked`
      excepted), or a shape differs; the message names the key and both shapes.
  """
  kept = check_state_dict(model_config, {k: np.shape(v) for k, v in state.items()},
                          source=source)
  out = jax.tree.map(lambda x: x, dict(fresh))  # A copy whose dicts can be filled.
  for key, path, layout in key_table(first_order(model_config)):
    if path[1] == 'head' and kept:
      continue
    _lookup(out, path[:-1])[path[-1]] = _from_torch_layout(np.asarray(state[key], np.float32),
                                                           layout)
  return out, kept


def check_state_dict(model_config: ml_collections.ConfigDict,
                     shapes: Mapping[str, Sequence[int]], *, source: str) -> List[str]:
  """Checks a state dict's keys and shapes against the network of `model_config`; returns the
  names of the parts that will stay fresh (`from_state_dict`).

  Raises:
    ValueError: a key is missing, unexpected (`num_batches_tracked` excepted) or of another shape,
      named.
  """
  plain = first_order(model_config)
  table = key_table(plain)
  expected = {key for key, _, _ in table}
  counters = {f'{key.rsplit(".", 1)[0]}.{BN_COUNTER}' for key, path, _ in table if path[-1] == 'var'}
  unexpected = sorted(set(shapes) - expected - counters, key=natural_key)
  missing = sorted(expected - set(shapes), key=natural_key)
  library = LIBRARIES[model_config.name][0]
  if unexpected or missing:
    raise ValueError(
        f'{source} is not a {library} {model_config.name} state dict: missing keys {missing[:5]}'
        f'{" ..." if len(missing) > 5 else ""}, unexpected keys {unexpected[:5]}'
        f'{" ..." if len(unexpected) > 5 else ""} ({len(missing)} missing, {len(unexpected)} '
        'unexpected).')
  kept = []
  if model_config.head.pool != 'gap':
    kept.append('the second-order head (gsop)')
  elif tuple(shapes[f'{_classifier(model_config)}.weight'])[0] != model_config.num_classes:
    kept.append(f'the classifier ({model_config.num_classes} classes)')
  abstract = abstract_variables(plain)
  for key, path, layout in table:
    if path[1] == 'head' and kept:
      continue
    want = torch_shape(tuple(_lookup(abstract, path).shape), layout)
    if tuple(shapes[key]) != want:
      raise ValueError(f'{source}: key {key!r} has shape {list(shapes[key])}, but config.model '
                       f'({model_config.name}, {model_config.num_classes} classes) needs '
                       f'{list(want)} for {"/".join(path)}.')
  return kept


def _classifier(model_config: ml_collections.ConfigDict) -> str:
  return 'classifier' if model_config.name == 'efficientnet_b0' else 'fc'


def setup_lines(model_config: ml_collections.ConfigDict) -> List[str]:
  """The Python lines that build the stock PyTorch model these weights load into, with stage 5's
  (EfficientNet: the last down-sampling stage's) stride set to 1 for the paper's -s1 networks.

  Raises:
    ValueError: a timm network with its own `config.model.stage_sizes` (no stock model has them;
      torchvision's ResNet class takes any).
  """
  library, constructor = LIBRARIES[model_config.name]
  n = model_config.num_classes
  sizes = list(model_config.stage_sizes)
  if sizes and library == 'torchvision':
    block = 'BasicBlock' if model_config.name in ('resnet18', 'resnet34') else 'Bottleneck'
    constructor = (f'torchvision.models.resnet.ResNet(torchvision.models.resnet.{block}, {sizes}, '
                   'num_classes={n})')
  elif sizes:
    raise ValueError(f'--format=torchvision is invalid for {model_config.name} with '
                     f'config.model.stage_sizes = {tuple(sizes)}: timm has no such model.')
  lines = [f'import {library}', f'model = {constructor.format(n=n)}']
  if model_config.last_stride == 1:
    if model_config.name == 'efficientnet_b0':
      lines.append('model.blocks[5][0].conv_dw.stride = (1, 1)  # -s1: no down-sampling in '
                   'stage 6')
    else:
      first = 'conv1' if model_config.name in ('resnet18', 'resnet34') else 'conv2'
      lines += [f'model.layer4[0].{first}.stride = (1, 1)  # -s1: stage 5 keeps stage 4\'s '
                'resolution',
                'model.layer4[0].downsample[0].stride = (1, 1)']
  lines += ['import safetensors.torch',
            "model.load_state_dict(safetensors.torch.load_file('model.safetensors'), strict=True)"]
  return lines


# The safetensors library parses, checks and writes the files. Its NumPy API has no bfloat16
# (NumPy has none: ml_dtypes, which JAX uses, gives it), so tensors are read through its
# framework-free `deserialize` (raw bytes, dtype name, shape) and this table; PyTorch writes
# bfloat16 state dicts as BF16.
_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
           'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
           'BOOL': np.bool_}


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes `tensors` as a safetensors file (`safetensors.numpy.save`), with string `metadata`."""
  data = safetensors.numpy.save({k: np.asarray(v) for k, v in tensors.items()},
                                metadata=dict(metadata) if metadata else None)
  paths.path(path).write_bytes(data)


def _not_safetensors(path: str) -> ValueError:
  return ValueError(f'{path!r} is not a safetensors file (convert a PyTorch .pth with '
                    "safetensors.torch.save_file(torch.load(path), 'model.safetensors')).")


@contextlib.contextmanager
def _opened(path: str) -> Iterator[Tuple[Any, str]]:
  """(`safetensors.safe_open` of the file at `path`, its local path): a gs:// file is copied to a
  local one first, once, and read from there."""
  with contextlib.ExitStack() as stack:
    local = path
    if paths.is_remote(path):
      local = stack.enter_context(tempfile.TemporaryDirectory()) + '/weights.safetensors'
      with open(local, 'wb') as f:
        f.write(paths.path(path).read_bytes())
    try:
      opened = stack.enter_context(safetensors.safe_open(local, framework='numpy'))
    except (safetensors.SafetensorError, OSError) as e:
      raise _not_safetensors(path) from e
    yield opened, local


def read_safetensors_header(path: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
  """({name: {'dtype', 'shape'}}, metadata) of a safetensors file, reading only its header.

  Raises:
    ValueError: the file is not a well-formed safetensors file (named), e.g. a pickled `.pth`, or
      holds a dtype a network's weights cannot have.
  """
  with _opened(path) as (f, _):
    return _header(f, path)


def _header(f: Any, path: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
  entries = {k: {'dtype': f.get_slice(k).get_dtype(), 'shape': list(f.get_slice(k).get_shape())}
             for k in f.keys()}
  for name, entry in entries.items():
    if entry['dtype'] not in _DTYPES:
      raise ValueError(f'{path!r}: tensor {name!r} has dtype {entry["dtype"]}; this reader '
                       f'accepts {", ".join(_DTYPES)}.')
  return entries, f.metadata() or {}


def read_safetensors(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
  """(tensors, metadata) of a safetensors file; bfloat16 tensors come as `ml_dtypes.bfloat16`.

  Raises:
    ValueError: the file is not a well-formed safetensors file (named), e.g. a pickled `.pth`.
  """
  with _opened(path) as (f, local):  # A gs:// file is fetched once, for both.
    _, metadata = _header(f, path)
    try:
      entries = safetensors.deserialize(paths.path(local).read_bytes())
    except safetensors.SafetensorError as e:
      raise _not_safetensors(path) from e
  return {name: np.frombuffer(entry['data'], np.dtype(_DTYPES[entry['dtype']]).newbyteorder('<'))
          .reshape(entry['shape']).astype(_DTYPES[entry['dtype']])
          for name, entry in entries}, metadata


def abstract_variables(model_config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """Shape structs of the plain network's {'params', 'batch_stats'} (traced, not compiled;
  remembered per config)."""
  return _abstract_variables(model_config.to_json())


@functools.lru_cache(maxsize=8)
def _abstract_variables(model_json: str) -> Dict[str, Any]:
  module = registry.create_backbone(ml_collections.ConfigDict(json.loads(model_json)))
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                        jax.ShapeDtypeStruct((1, 32, 32, 3), jax.numpy.float32))
