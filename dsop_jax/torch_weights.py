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

Weights travel as safetensors files (a JSON header and raw little-endian arrays, read and written
here with NumPy alone): nothing is ever unpickled.
"""

import functools
import json
import re
import struct
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from dsop_jax import models
from dsop_jax import paths

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
  head = model_config.get('head')
  if head is not None and head.pool != 'gap':
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
  if plain.get('head') is not None:
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
  if model_config.get('head') is not None and model_config.head.pool != 'gap':
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
  sizes = list(model_config.get('stage_sizes') or ())
  if sizes and library == 'torchvision':
    block = 'BasicBlock' if model_config.name in ('resnet18', 'resnet34') else 'Bottleneck'
    constructor = (f'torchvision.models.resnet.ResNet(torchvision.models.resnet.{block}, {sizes}, '
                   'num_classes={n})')
  elif sizes:
    raise ValueError(f'--format=torchvision is invalid for {model_config.name} with '
                     f'config.model.stage_sizes = {tuple(sizes)}: timm has no such model.')
  lines = [f'import {library}', f'model = {constructor.format(n=n)}']
  if model_config.get('last_stride', 2) == 1:
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


# Safetensors: an 8-byte little-endian header length, a JSON header {name: {"dtype", "shape",
# "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the tensors' bytes.
_DTYPES = {'F32': np.float32, 'F64': np.float64, 'F16': np.float16, 'I64': np.int64,
           'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes `tensors` (in their order) as a safetensors file, with string `metadata`."""
  header: Dict[str, Any] = {'__metadata__': dict(metadata)} if metadata else {}
  offset, blobs = 0, []
  for name, array in tensors.items():
    array = np.asarray(array)  # tobytes() writes C order; ascontiguousarray would make 0-d 1-d.
    if array.dtype not in _NAMES:
      raise ValueError(f'{name}: dtype {array.dtype} has no safetensors name.')
    blob = array.astype(array.dtype.newbyteorder('<'), copy=False).tobytes()
    header[name] = {'dtype': _NAMES[array.dtype], 'shape': list(array.shape),
                    'data_offsets': [offset, offset + len(blob)]}
    offset += len(blob)
    blobs.append(blob)
  text = json.dumps(header, separators=(',', ':')).encode()
  text += b' ' * (-len(text) % 8)  # The reference writer aligns the data to 8 bytes.
  with paths.path(path).open('wb') as f:
    f.write(struct.pack('<Q', len(text)))
    f.write(text)
    for blob in blobs:
      f.write(blob)


def read_safetensors_header(path: str) -> Tuple[Dict[str, Any], Dict[str, str], int]:
  """(tensor entries, metadata, the data's offset in the file) of a safetensors file, reading
  only its header.

  Raises:
    ValueError: the file is not a well-formed safetensors file (named), e.g. a pickled `.pth`.
  """
  bad = ValueError(f'{path!r} is not a safetensors file (convert a PyTorch .pth with '
                   "safetensors.torch.save_file(torch.load(path), 'model.safetensors')).")
  with paths.path(path).open('rb') as f:
    start = f.read(8)
    size = struct.unpack('<Q', start)[0] if len(start) == 8 else -1
    if not 1 < size < 100_000_000:
      raise bad
    try:
      header = json.loads(f.read(size))
    except (ValueError, UnicodeDecodeError):
      raise bad from None
  if not isinstance(header, dict):
    raise bad
  metadata = header.pop('__metadata__', None) or {}
  for name, info in header.items():
    if (not isinstance(info, dict) or info.get('dtype') not in _DTYPES or
        len(info.get('data_offsets', ())) != 2):
      raise ValueError(f'{path!r}: tensor {name!r} has an entry this reader does not accept '
                       f'({info!r}); dtypes: {", ".join(_DTYPES)}.')
  return header, metadata, 8 + size


def read_safetensors(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
  """(tensors, metadata) of a safetensors file.

  Raises:
    ValueError: the file is not a well-formed safetensors file (named), e.g. a pickled `.pth`.
  """
  header, metadata, offset = read_safetensors_header(path)
  with paths.path(path).open('rb') as f:
    f.seek(offset)
    body = f.read()
  tensors = {}
  for name, info in header.items():
    begin, end = info['data_offsets']
    dtype = np.dtype(_DTYPES[info['dtype']])
    if not 0 <= begin <= end <= len(body) or end - begin != dtype.itemsize * int(
        np.prod(info['shape'], dtype=np.int64)):
      raise ValueError(f'{path!r}: tensor {name!r} has offsets {info["data_offsets"]} that do '
                       f'not fit its shape {info["shape"]} or the file ({len(body)} data bytes).')
    array = np.frombuffer(body[begin:end], dtype.newbyteorder('<'))
    tensors[name] = array.reshape(info['shape']).astype(dtype)
  return tensors, metadata


def abstract_variables(model_config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """Shape structs of the plain network's {'params', 'batch_stats'} (traced, not compiled;
  remembered per config)."""
  return _abstract_variables(model_config.to_json())


@functools.lru_cache(maxsize=8)
def _abstract_variables(model_json: str) -> Dict[str, Any]:
  module = models.create_backbone(ml_collections.ConfigDict(json.loads(model_json)))
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                        jax.ShapeDtypeStruct((1, 32, 32, 3), jax.numpy.float32))
