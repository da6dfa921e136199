"""The detached network as an ONNX model, converted from its jaxpr (no TensorFlow, no PyTorch).

`convert(forward, input_shape)` traces `forward` (images -> logits, the weights closed over) with a
symbolic batch size and writes each primitive as ONNX operators (opset 18): convolutions, pooling,
matrix products (as Einsum), the elementwise and reduction operations of batch normalisation,
ReLU, swish, squeeze-and-excitation and global average pooling. The graph takes and gives
arrays in JAX's layout (images NHWC float32, logits [batch, classes]); the weights are its
initialisers. A primitive without a translation here (the cumsum of the second-order head's
upper-triangle indices, for one) is refused by name: the StableHLO export runs every network.

Needs the `onnx` package (`pip install 'dsop_jax[onnx]'`); onnxruntime runs the result.

Why not the `jax2onnx` package: tried (2026-12-07) at its newest release, 0.17.1 (installed with
`pip install --no-deps --target DIR` beside this environment), converting each network of
tests/onnx_test.py's `NETWORKS` with `to_onnx(forward, [('B', size, size, 3)], opset=18)` and
running it in onnxruntime 1.32 at batches 1 and 3 against JAX's logits (1e-4): EfficientNet and the pre-activation CIFAR ResNet passed (2.0e-7 and
4.6e-7 of the largest logit), but the ResNets (the basic-block stem and SE-ResNeXt) failed to
convert: its patched `flax.linen.max_pool` takes the window positionally only
(`patched_max_pool() takes 1 positional argument but 2 ... were given`). And it cannot be installed
beside dsop_jax: it requires `orbax-checkpoint>=0.11.6,<0.11.37` (pip: ResolutionImpossible
against our `>=0.12.8`), and brings equinox, dm-pix, netron, huggingface-hub and orbax-export.
This converter stays; the tests hold it to every family's logits at each JAX upgrade.
"""

import string
from typing import Any, Callable, List, Sequence, Tuple

import jax
from jax.extend import core as jax_core
import numpy as np

from dsop_jax import paths

OPSET = 18
INPUT_NAME, OUTPUT_NAME = 'images', 'logits'
_INT64_MAX = np.iinfo(np.int64).max

_BINARY = {'add': 'Add', 'sub': 'Sub', 'mul': 'Mul', 'div': 'Div', 'max': 'Max', 'min': 'Min',
           'pow': 'Pow', 'eq': 'Equal', 'lt': 'Less', 'le': 'LessOrEqual', 'gt': 'Greater',
           'ge': 'GreaterOrEqual', 'and': 'And', 'or': 'Or'}
_UNARY = {'neg': 'Neg', 'exp': 'Exp', 'log': 'Log', 'tanh': 'Tanh', 'logistic': 'Sigmoid',
          'sqrt': 'Sqrt', 'abs': 'Abs', 'sign': 'Sign', 'floor': 'Floor', 'ceil': 'Ceil',
          'erf': 'Erf', 'not': 'Not', 'sin': 'Sin', 'cos': 'Cos', 'copy': 'Identity',
          'copy_p': 'Identity', 'sharding_constraint': 'Identity', 'optimization_barrier': 'Identity'}
_REDUCE = {'reduce_sum': 'ReduceSum', 'reduce_max': 'ReduceMax', 'reduce_min': 'ReduceMin',
           'reduce_prod': 'ReduceProd'}


def _onnx():
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("The ONNX export needs the onnx package: pip install 'dsop_jax[onnx]'.") from e
  return onnx


class _Graph:
  """ONNX nodes and initialisers being written, and the ONNX name of each jaxpr variable."""

  def __init__(self, onnx, batch):
    self.onnx, self.helper, self.batch_symbol = onnx, onnx.helper, batch
    self.nodes, self.initializers, self.names = [], [], {}
    self._count = 0
    self._batch_tensor = None

  def fresh(self, hint: str) -> str:
    self._count += 1
    return f'{hint}_{self._count}'

  def const(self, value: Any, dtype: Any = None, hint: str = 'const') -> str:
    array = np.asarray(value, dtype=dtype)
    name = self.fresh(hint)
    self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
    return name

  def ints(self, values: Sequence[int]) -> str:
    return self.const(np.asarray(list(values), np.int64), hint='ints')

  def node(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> Any:
    outputs = [self.fresh(op.lower()) for _ in range(n_out)]
    self.nodes.append(self.helper.make_node(op, list(inputs), outputs, **attrs))
    return outputs[0] if n_out == 1 else outputs

  def batch(self) -> str:
    """The batch size as a 1-element int64 tensor, read from the input's shape."""
    if self._batch_tensor is None:
      shape = self.node('Shape', [INPUT_NAME])
      self._batch_tensor = self.node('Slice', [shape, self.ints([0]), self.ints([1])])
    return self._batch_tensor

  def is_batch(self, dim: Any) -> bool:
    return not _known(dim) and dim == self.batch_symbol

  def read(self, atom: Any) -> str:
    if isinstance(atom, jax_core.Literal):
      return self.const(np.asarray(atom.val, dtype=atom.aval.dtype), hint='literal')
    return self.names[atom]


def _known(dim: Any) -> bool:
  """Whether a dimension is a number (not an expression of the symbolic batch size)."""
  return isinstance(dim, (int, np.integer))


def _static(dims: Sequence[Any], what: str) -> List[int]:
  if not all(_known(d) for d in dims):
    raise NotImplementedError(f'ONNX export: {what} {tuple(map(str, dims))} depends on the batch '
                              'size in a way this converter does not translate.')
  return [int(d) for d in dims]


def _transpose_to(g: _Graph, x: str, perm: Sequence[int]) -> str:
  return x if list(perm) == list(range(len(perm))) else g.node('Transpose', [x], perm=list(perm))


def _inverse(perm: Sequence[int]) -> List[int]:
  inverse = [0] * len(perm)
  for i, p in enumerate(perm):
    inverse[p] = i
  return inverse


def _conv(g: _Graph, eqn: Any, lhs: str, rhs: str) -> str:
  p = eqn.params
  if any(d != 1 for d in p['lhs_dilation']) or p['batch_group_count'] != 1:
    raise NotImplementedError('ONNX export: transposed or batch-grouped convolutions are not '
                              'translated.')
  dn = p['dimension_numbers']
  x = _transpose_to(g, lhs, dn.lhs_spec)  # N, C, spatial...
  w = _transpose_to(g, rhs, dn.rhs_spec)  # O, I, spatial...
  pads = [lo for lo, _ in p['padding']] + [hi for _, hi in p['padding']]
  y = g.node('Conv', [x, w], strides=list(p['window_strides']), pads=pads,
             dilations=list(p['rhs_dilation']), group=int(p['feature_group_count']))
  return _transpose_to(g, y, _inverse(dn.out_spec))


def _pool(g: _Graph, eqn: Any, x: str) -> str:
  """reduce_window_max / reduce_window_sum over the spatial dimensions of an NHWC array."""
  p = eqn.params
  rank = len(p['window_dimensions'])
  windowed = [i for i in range(rank) if p['window_dimensions'][i] != 1 or
              p['window_strides'][i] != 1 or p['padding'][i] != (0, 0)]
  if (rank != 4 or not set(windowed) <= {1, 2} or any(d != 1 for d in p['base_dilation']) or
      any(d != 1 for d in p['window_dilation'])):
    raise NotImplementedError(f'ONNX export: {eqn.primitive.name} over {windowed} of a rank-{rank} '
                              'array is not translated (spatial pooling of NHWC only).')
  attrs = dict(kernel_shape=list(p['window_dimensions'][1:3]),
               strides=list(p['window_strides'][1:3]),
               pads=[p['padding'][1][0], p['padding'][2][0], p['padding'][1][1], p['padding'][2][1]])
  nchw = _transpose_to(g, x, (0, 3, 1, 2))
  if eqn.primitive.name == 'reduce_window_max':
    y = g.node('MaxPool', [nchw], **attrs)
  else:  # A window sum: the average over the padded window, times its size.
    y = g.node('AveragePool', [nchw], count_include_pad=1, **attrs)
    size = int(np.prod(p['window_dimensions']))
    y = g.node('Mul', [y, g.const(size, eqn.outvars[0].aval.dtype)])
  return _transpose_to(g, y, (0, 2, 3, 1))


def _einsum(g: _Graph, eqn: Any, lhs: str, rhs: str) -> str:
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  r1, r2 = len(eqn.invars[0].aval.shape), len(eqn.invars[1].aval.shape)
  letters = iter(string.ascii_lowercase)
  a, b = [None] * r1, [None] * r2
  for i, j in zip(lb, rb):
    a[i] = b[j] = next(letters)
  for i, j in zip(lc, rc):
    a[i] = b[j] = next(letters)
  for i in range(r1):
    a[i] = a[i] or next(letters)
  for j in range(r2):
    b[j] = b[j] or next(letters)
  out = ([a[i] for i in lb] + [a[i] for i in range(r1) if i not in lb and i not in lc] +
         [b[j] for j in range(r2) if j not in rb and j not in rc])
  return g.node('Einsum', [lhs, rhs], equation=f'{"".join(a)},{"".join(b)}->{"".join(out)}')


def _shape_for_expand(g: _Graph, shape: Sequence[Any]) -> str:
  """A target shape for Expand: the batch size where the dimension is symbolic."""
  if all(_known(d) for d in shape):
    return g.ints(shape)
  parts = []
  for d in shape:
    if g.is_batch(d):
      parts.append(g.batch())
    elif _known(d):
      parts.append(g.ints([d]))
    else:
      _static([d], 'a broadcast shape')
  return g.node('Concat', parts, axis=0)


def _reshape_target(g: _Graph, sizes: Sequence[Any]) -> str:
  symbolic = [i for i, d in enumerate(sizes) if not _known(d)]
  if len(symbolic) > 1:
    _static(sizes, 'a reshape to')
  return g.ints([-1 if i in symbolic else int(d) for i, d in enumerate(sizes)])


def _equation(g: _Graph, eqn: Any, inputs: List[str]) -> List[str]:
  """ONNX for one jaxpr equation; returns the names of its outputs."""
  name, p = eqn.primitive.name, eqn.params
  out_aval = eqn.outvars[0].aval if eqn.outvars else None
  if name in _BINARY:
    return [g.node(_BINARY[name], inputs)]
  if name == 'ne':
    return [g.node('Not', [g.node('Equal', inputs)])]
  if name in _UNARY:
    return [g.node(_UNARY[name], inputs)]
  if name == 'rsqrt':
    return [g.node('Reciprocal', [g.node('Sqrt', inputs)])]
  if name == 'square':
    return [g.node('Mul', [inputs[0], inputs[0]])]
  if name == 'integer_pow':
    y = int(p['y'])
    if y == 2:
      return [g.node('Mul', [inputs[0], inputs[0]])]
    return [g.node('Pow', [inputs[0], g.const(float(y), out_aval.dtype)])]
  if name == 'convert_element_type':
    return [g.node('Cast', inputs, to=g.helper.np_dtype_to_tensor_dtype(np.dtype(p['new_dtype'])))]
  if name == 'select_n':
    if len(inputs) != 3:
      raise NotImplementedError('ONNX export: select_n with more than two cases is not translated.')
    predicate = inputs[0]
    if eqn.invars[0].aval.dtype != np.bool_:
      predicate = g.node('Cast', [predicate], to=g.onnx.TensorProto.BOOL)
    return [g.node('Where', [predicate, inputs[2], inputs[1]])]
  if name == 'clamp':
    return [g.node('Max', [g.node('Min', [inputs[1], inputs[2]]), inputs[0]])]
  if name in _REDUCE:
    return [g.node(_REDUCE[name], [inputs[0], g.ints(p['axes'])], keepdims=0)]
  if name == 'argmax':
    (axis,) = p['axes']
    index = g.node('ArgMax', inputs, axis=int(axis), keepdims=0)
    return [g.node('Cast', [index],
                   to=g.helper.np_dtype_to_tensor_dtype(np.dtype(p['index_dtype'])))]
  if name == 'dot_general':
    return [_einsum(g, eqn, *inputs)]
  if name == 'conv_general_dilated':
    return [_conv(g, eqn, *inputs)]
  if name in ('reduce_window_max', 'reduce_window_sum'):
    return [_pool(g, eqn, inputs[0])]
  if name == 'broadcast_in_dim':
    shape, dims = p['shape'], p['broadcast_dimensions']
    x = inputs[0]
    new_axes = [i for i in range(len(shape)) if i not in dims]
    if new_axes:
      x = g.node('Unsqueeze', [x, g.ints(new_axes)])
    if tuple(eqn.invars[0].aval.shape) == tuple(shape[i] for i in dims) and all(
        shape[i] == 1 for i in new_axes):
      return [x] if new_axes else [g.node('Identity', [x])]
    return [g.node('Expand', [x, _shape_for_expand(g, shape)])]
  if name == 'reshape':
    return [g.node('Reshape', [inputs[0], _reshape_target(g, p['new_sizes'])])]
  if name == 'squeeze':
    return [g.node('Squeeze', [inputs[0], g.ints(p['dimensions'])])]
  if name == 'transpose':
    return [g.node('Transpose', inputs, perm=list(p['permutation']))]
  if name == 'concatenate':
    return [g.node('Concat', inputs, axis=int(p['dimension']))]
  if name == 'split':
    sizes = _static(p['sizes'], 'split sizes')
    return g.node('Split', [inputs[0], g.ints(sizes)], n_out=len(sizes), axis=int(p['axis'])) \
        if len(sizes) > 1 else [g.node('Identity', inputs)]
  if name == 'slice':
    starts, limits = p['start_indices'], p['limit_indices']
    ends = [_INT64_MAX if not _known(e) else int(e) for e in limits]
    steps = list(p['strides'] or [1] * len(starts))
    return [g.node('Slice', [inputs[0], g.ints(_static(starts, 'slice starts')), g.ints(ends),
                             g.ints(range(len(starts))), g.ints(steps)])]
  if name == 'pad':
    config = p['padding_config']
    if any(interior != 0 or lo < 0 or hi < 0 for lo, hi, interior in config):
      raise NotImplementedError('ONNX export: negative or interior padding is not translated.')
    pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
    return [g.node('Pad', [inputs[0], g.ints(pads), inputs[1]], mode='constant')]
  if name == 'iota':
    shape = _static(p['shape'], 'an iota of shape')
    values = np.arange(shape[p['dimension']], dtype=np.dtype(p['dtype']))
    values = values.reshape([-1 if i == p['dimension'] else 1 for i in range(len(shape))])
    return [g.const(np.broadcast_to(values, shape), hint='iota')]
  if name == 'dim_as_value':
    if not g.is_batch(p['dim']):
      _static([p['dim']], 'a dimension used as a value')
    value = g.node('Squeeze', [g.batch(), g.ints([0])])
    return [g.node('Cast', [value], to=g.helper.np_dtype_to_tensor_dtype(out_aval.dtype))]
  subjaxprs = [v for k, v in p.items() if k in ('jaxpr', 'call_jaxpr', 'fun_jaxpr')]
  if subjaxprs:  # jit, custom_jvp (jax.nn.relu), custom_vjp, remat: written inline.
    inner = subjaxprs[0]
    closed = inner if isinstance(inner, jax_core.ClosedJaxpr) else jax_core.ClosedJaxpr(inner, ())
    return _jaxpr(g, closed, inputs[len(inputs) - len(closed.jaxpr.invars):])
  raise NotImplementedError(f'ONNX export: the JAX primitive {name!r} has no ONNX translation here; '
                            'export --format=stablehlo runs this network.')


def _jaxpr(g: _Graph, closed: Any, inputs: Sequence[str]) -> List[str]:
  jaxpr = closed.jaxpr
  for var, value in zip(jaxpr.constvars, closed.consts):
    g.names[var] = g.const(np.asarray(value), hint='weight')
  for var, name in zip(jaxpr.invars, inputs):
    g.names[var] = name
  for eqn in jaxpr.eqns:
    outputs = _equation(g, eqn, [g.read(v) for v in eqn.invars])
    for var, name in zip(eqn.outvars, outputs):
      if not isinstance(var, jax_core.DropVar):
        g.names[var] = name
  return [g.read(v) for v in jaxpr.outvars]


def convert(forward: Callable[[Any], Any], image_shape: Tuple[int, int, int],
            doc: str = '') -> Any:
  """An `onnx.ModelProto` of `forward` (images [batch, *image_shape] float32 -> logits), the batch
  size left free ('batch'); checked with `onnx.checker`."""
  onnx = _onnx()
  batch = jax.export.symbolic_shape('batch')[0]
  closed = jax.make_jaxpr(forward)(jax.ShapeDtypeStruct((batch, *image_shape), np.float32))
  g = _Graph(onnx, batch)
  (logits,) = _jaxpr(g, closed, [INPUT_NAME])
  out_aval = closed.jaxpr.outvars[0].aval
  g.nodes.append(g.helper.make_node('Identity', [logits], [OUTPUT_NAME]))
  graph = g.helper.make_graph(
      g.nodes, 'detached_network',
      [g.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT,
                                       ['batch', *image_shape])],
      [g.helper.make_tensor_value_info(
          OUTPUT_NAME, g.helper.np_dtype_to_tensor_dtype(out_aval.dtype),
          ['batch', *[int(d) for d in out_aval.shape[1:]]])],
      initializer=g.initializers)
  model = g.helper.make_model(graph, opset_imports=[g.helper.make_opsetid('', OPSET)],
                              producer_name='dsop_jax', doc_string=doc)
  model.ir_version = min(model.ir_version, 10)  # Readable by onnxruntime releases of 2024 on.
  onnx.checker.check_model(model)
  return model


def save(model: Any, path: paths.PathLike) -> None:
  paths.path(path).write_bytes(model.SerializeToString())
