"""The DSoP-Net model: variable layout, outputs, and the gradient flow of Eq. 2."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsop_jax.models import dsop
from dsop_jax.models import registry
from dsop_jax.training import losses
from tests import conftest


def _model(backbone, **layout):
  cfg = conftest.branches_config(**layout)
  specs = registry.layout_branches(backbone.stage_specs(), cfg)
  return dsop.DSoPNet(backbone=backbone, branches=tuple(specs), num_classes=5)


def _init(model, size=32):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, size, size, 3)), jnp.float32)
  return registry.init_variables(model, jax.random.key(0), x), x


def test_variables_are_backbone_subtree_plus_one_subtree_per_branch():
  backbone = conftest.TinyResNet()
  x = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
  init = lambda module: jax.eval_shape(  # noqa: E731  (shapes only: nothing to compute)
      lambda x: module.init(jax.random.key(0), x, train=False), x)
  variables = init(_model(backbone))
  names = ['a_pds2', 'a_pds3', 'a_pds4', 'a_pds5']
  assert sorted(variables) == ['batch_stats', 'params']
  for collection in variables.values():
    assert sorted(collection) == sorted(['backbone'] + names)
  plain = init(backbone)
  backbone_subtree = {c: variables[c]['backbone'] for c in variables}
  assert jax.tree.structure(plain) == jax.tree.structure(backbone_subtree)
  assert jax.tree.map(lambda a: a.shape, plain) == jax.tree.map(
      lambda a: a.shape, backbone_subtree)


def test_outputs_main_and_aux_logits():
  model = _model(conftest.TinyResNet())
  variables, x = _init(model)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert sorted(out) == ['aux_logits', 'logits']
  assert out['logits'].shape == (4, 5)
  assert sorted(out['aux_logits']) == ['a_pds2', 'a_pds3', 'a_pds4', 'a_pds5']
  assert all(v.shape == (4, 5) and v.dtype == jnp.float32 for v in out['aux_logits'].values())


def test_no_branches_is_the_plain_network():
  backbone = conftest.TinyResNet()
  model = _model(backbone, blocks=(0, 0, 0, 0))
  variables, x = _init(model)
  assert sorted(variables['params']) == ['backbone']
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert out['aux_logits'] == {}


def _grads_for_head(model, variables, x, head):
  labels = jnp.arange(x.shape[0]) % 5

  def loss_fn(params):
    out, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
    weights = {name: float(name == head) for name in losses.head_logits(out)}
    return losses.dsop_loss(outputs=out, labels=labels, weights=weights)[0]

  return jax.jit(jax.grad(loss_fn))(variables['params'])


def _grads_per_head(model, variables, x):
  """{head: gradient of that head's loss alone}, every head from one compiled program (a Jacobian
  of the vector of head losses)."""
  labels = jnp.arange(x.shape[0]) % 5
  heads = sorted(losses.head_logits(jax.eval_shape(
      lambda v: model.apply(v, x, train=False), variables)))

  def head_losses(params):
    out, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
    return jnp.stack([losses.dsop_loss(outputs=out, labels=labels,
                                       weights={name: float(name == head) for name in heads})[0]
                      for head in heads])

  jacobian = jax.jit(jax.jacrev(head_losses))(variables['params'])
  return {head: jax.tree.map(lambda g, i=i: g[i], jacobian)
          for i, head in enumerate(heads)}


def _nonzero(tree) -> bool:
  return any(bool(jnp.any(leaf != 0)) for leaf in jax.tree.leaves(tree))


@functools.cache
def _imagenet_layout_grads():
  model = _model(conftest.TinyResNet())
  variables, x = _init(model, size=64)  # Stage 5 at 2x2: a 1x1 map has zero covariance.
  return _grads_per_head(model, variables, x)


@pytest.mark.parametrize('head, last_stage', [
    ('a_pds2', 2), ('a_pds3', 3), ('a_pds4', 4), ('a_pds5', 5), ('logits', 6)])
def test_eq2_gradient_flow_imagenet_layout(head, last_stage):
  """L_a^i reaches only backbone layers up to its insertion point, and no other branch."""
  grads = _imagenet_layout_grads()[head]
  backbone = grads['backbone']
  for stage in range(2, 6):
    assert _nonzero(backbone[f'stage{stage}_block1']) == (stage <= last_stage), (head, stage)
  assert _nonzero(backbone['conv_init']) and _nonzero(backbone['bn_init'])
  assert _nonzero(backbone['head']) == (head == 'logits')
  for name in ['a_pds2', 'a_pds3', 'a_pds4', 'a_pds5']:
    assert _nonzero(grads[name]) == (name == head), (head, name)


def test_eq2_gradient_flow_within_a_stage_cifar_pattern():
  model = _model(conftest.TinyPreAct(), blocks=(), pattern='[1,0,2]', channels=(4, 4, 4),
                 reduction=('direct',) * 3)
  variables, x = _init(model, size=16)
  grads = _grads_for_head(model, variables, x, 'a_pds2_1')
  backbone = grads['backbone']
  assert all(_nonzero(backbone[f'stage1_block{b}']) for b in (1, 2, 3))
  assert _nonzero(backbone['stage2_block1'])
  for name in ['stage2_block2', 'stage2_block3', 'stage3_block1', 'bn_final', 'head']:
    assert not _nonzero(backbone[name]), name
  assert [n for n in grads if n != 'backbone' and _nonzero(grads[n])] == ['a_pds2_1']
