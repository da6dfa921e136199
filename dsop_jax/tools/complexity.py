"""Parameters and GFLOPs of the DSoP-Net training graph and of the detached test graph.

GFLOPs follow the paper (Tables I, II, VIII, X): multiply-accumulates per image, counted here from
the jaxpr of one forward pass at the config's input size; every convolution and matrix product
counts (backbone, branch blocks, dimensionality reductions, covariance, Newton-Schulz iterations and
classifiers), elementwise work (BN, ReLU, pooling) does not, nor does MPN-COV's eigendecomposition. Everything runs under abstract
evaluation (`jax.eval_shape` / `jax.make_jaxpr`), so 224x224 ImageNet models report in seconds.

  python -m dsop_jax.complexity --config=configs/imagenet_r18.py [--json]
"""

import math
from typing import Any, Callable, Dict

import jax
import jax.extend as jex
import jax.numpy as jnp
import ml_collections

from dsop_jax.models import branches as branches_lib
from dsop_jax.models import covpool
from dsop_jax.models import gsop
from dsop_jax.models import registry
from dsop_jax.models import stages



def _eqn_macs(eqn: Any) -> int:
  out = eqn.outvars[0].aval
  if eqn.primitive.name == 'conv_general_dilated':
    rhs = eqn.invars[1].aval
    out_features = rhs.shape[eqn.params['dimension_numbers'].rhs_spec[0]]
    return math.prod(out.shape) * math.prod(rhs.shape) // out_features
  if eqn.primitive.name == 'dot_general':
    (lhs_contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval
    return math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)
  return 0


def jaxpr_macs(jaxpr: Any) -> int:
  """Multiply-accumulates of all convolutions and dot products in a jaxpr, nested ones included:
  a scan's body counts once per iteration, and a cond counts its costliest branch (the branches
  of `lax.platform_dependent`, as MPN-COV's eigh, are one computation for different devices).
  A while loop whose body multiplies raises: its trip count is not known."""
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_macs(eqn)
    name = eqn.primitive.name
    inner = [jaxpr_macs(sub) for sub in jex.core.jaxprs_in_params(eqn.params)]
    if name == 'cond':
      total += max(inner, default=0)
    elif name == 'scan':
      total += eqn.params['length'] * sum(inner)
    elif name == 'while' and any(inner):
      raise NotImplementedError('MAC counting of a while loop that multiplies is not supported.')
    else:
      total += sum(inner)
  return total


def count_macs(fn: Callable[..., Any], *args: Any) -> int:
  """MACs of `fn(*args)`; args may be arrays or jax.ShapeDtypeStruct."""
  return jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def _abstract_init(module: Any, *args: Any) -> Any:
  return jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, train=False), *args)


def _pooled_dim(spec: branches_lib.BranchSpec, in_channels: int) -> int:
  """Length of the pooled vector of a branch or head reading `in_channels` channels."""
  reduced = branches_lib.reduction_channels(spec, in_channels)
  return covpool.pooled_dim(spec.pool, reduced[-1] if reduced else in_channels)


def report(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """Parameters and GFLOPs (MACs per image / 1e9) of the training and the detached test graph of a
  validated config.

  Returns:
    {'model', 'image_size', 'params_train', 'params_test', 'gflops_train', 'gflops_test',
     'branches': {name: {'params', 'gflops', 'attach', 'pooled_dim'}}}, and for the second-order
    network 'head': {'params', 'gflops', 'pooled_dim'} of its reduction + pooling + classifier.
  """
  size = config.data.image_size
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  model, backbone = registry.create(config.model), registry.create_backbone(config.model)
  train_vars = _abstract_init(model, image)
  test_vars = _abstract_init(backbone, image)
  _, features = jax.eval_shape(lambda v, x: backbone.apply(v, x, train=False), test_vars, image)
  stage_specs = stages.branch_block_specs(backbone)
  per_branch = {}
  for spec in registry.branch_specs(config.model):
    branch = branches_lib.AuxBranch(spec, stage_specs[spec.stage], config.model.num_classes,
                                    registry.DTYPES[config.model.dtype])
    feature = features[spec.attach]
    branch_vars = _abstract_init(branch, feature)
    per_branch[spec.name] = {
        'attach': spec.attach,
        'params': registry.count_params(train_vars['params'][spec.name]),
        'gflops': count_macs(lambda v, x, b=branch: b.apply(v, x, train=False),
                             branch_vars, feature) / 1e9,
        'pooled_dim': _pooled_dim(spec, feature.shape[-1]),
    }
  rep = {
      'model': config.model.name,
      'image_size': size,
      'params_train': registry.count_params(train_vars['params']),
      'params_test': registry.count_params(test_vars['params']),
      'gflops_train': count_macs(lambda v, x: model.apply(v, x, train=False),
                                 train_vars, image) / 1e9,
      'gflops_test': count_macs(lambda v, x: backbone.apply(v, x, train=False),
                                test_vars, image) / 1e9,
      'branches': per_branch,
  }
  head = registry.head_spec(config.model)
  if head is not None:
    module = gsop.GSoPHead(head, config.model.num_classes, registry.DTYPES[config.model.dtype])
    feature = features[head.attach]
    head_vars = _abstract_init(module, feature)
    rep['head'] = {
        'params': registry.count_params(head_vars['params']),
        'gflops': count_macs(lambda v, x: module.apply(v, x, train=False), head_vars, feature) / 1e9,
        'pooled_dim': _pooled_dim(head, feature.shape[-1]),
    }
  return rep


def format_table(rep: Dict[str, Any]) -> str:
  """A plain-text table of a `report()` result."""
  lines = [f"{rep['model']} at {rep['image_size']}x{rep['image_size']}",
           f"{'graph':<16}{'attach':<16}{'pooled dim':>11}{'params (M)':>12}{'GFLOPs':>9}"]
  row = '{:<16}{:<16}{:>11}{:>12.2f}{:>9.2f}'
  lines.append(row.format('train (DSoP)', '', '', rep['params_train'] / 1e6, rep['gflops_train']))
  lines.append(row.format('test (detached)', '', '', rep['params_test'] / 1e6, rep['gflops_test']))
  if 'head' in rep:
    h = rep['head']
    lines.append(row.format(f'  {gsop.NAME} head', '', h['pooled_dim'], h['params'] / 1e6,
                            h['gflops']))
  for name, b in rep['branches'].items():
    lines.append(row.format(f'  {name}', b['attach'], b['pooled_dim'], b['params'] / 1e6,
                            b['gflops']))
  return '\n'.join(lines)
