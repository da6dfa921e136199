"""The second-order network (Table II's iSQRT-COV/MPN-COV rows, Table XI): structure, counts, detach."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsop_jax import config_files
from dsop_jax.configs import imagenet_r18
from dsop_jax.configs import imagenet_r50_gsop
from dsop_jax.models import branches
from dsop_jax.models import gsop
from dsop_jax.models import registry
from dsop_jax.models import resnet
from dsop_jax.tools import complexity
from dsop_jax.training import export
from dsop_jax.training import losses

R50_PARAMS = 25_557_032  # torchvision's ResNet-50, of which the FC is 2048 * 1000 + 1000.

# Table XI: (config option, reduction chain, side branches) for every row.
TABLE_XI = [
    ('dr=64', [64], 0), ('dr=128', [128], 0), ('dr=256', [256], 0),
    ('psdr=64', [1024, 256, 64], 0), ('psdr=128', [1024, 256, 128], 0),
    ('psdr=64,delta=0.5', [1024, 512, 256, 128, 64], 0),
    ('psdr=128,delta=0.5', [1024, 512, 256, 128], 0),
    ('psdr=256,delta=0.5', [1024, 512, 256], 0),
    ('psdr=64,delta=0.5,psdr_aux', [1024, 512, 256, 128, 64], 4),
    ('psdr=128,delta=0.5,psdr_aux', [1024, 512, 256, 128], 3),
    ('psdr=256,delta=0.5,psdr_aux', [1024, 512, 256], 2),
]


def _conv_bn(cin: int, cout: int) -> int:
  return cin * cout + 2 * cout


def _classifier(channels: int) -> int:
  return channels * (channels + 1) // 2 * 1000 + 1000


def test_table_ii_isqrt_cov_resnet50_parameters_and_macs():
  config = imagenet_r50_gsop.get_config()
  rep = complexity.report(config)
  # Table II: 56.9M = ResNet-50 without its FC + DR 2048 -> 256 + FC on the 32,896-d vector.
  expected = R50_PARAMS - 2_049_000 + _conv_bn(2048, 256) + _classifier(256)
  assert rep['params_train'] == rep['params_test'] == expected == 56_929_832
  assert rep['branches'] == {} and rep['head']['pooled_dim'] == 32896
  # MACs of the head at 14x14 (stride-1 stage 5): DR, covariance, 12 Newton-Schulz products of
  # 256x256 matrices (5 iterations), FC.
  head_macs = 196 * 2048 * 256 + 196 * 256 * 256 + 12 * 256**3 + 32896 * 1000
  assert rep['head']['gflops'] == pytest.approx(head_macs / 1e9, rel=1e-9)
  plain = complexity.report(imagenet_r50_gsop.imagenet_r50.get_config('plain'))
  assert rep['gflops_test'] == pytest.approx(
      plain['gflops_test'] + (head_macs - 2048 * 1000) / 1e9, rel=1e-9)
  mpn = complexity.report(imagenet_r50_gsop.get_config('mpn_cov'))
  assert mpn['params_test'] == expected  # MPN-COV differs only in how it takes the square root.


@pytest.mark.parametrize('option, chain, num_sides', TABLE_XI)
def test_table_xi_rows_build_their_reduction_and_side_branches(option, chain, num_sides):
  config = imagenet_r50_gsop.get_config(option)
  head = registry.head_spec(config.model)
  assert branches.reduction_channels(head, 2048) == chain
  sides = registry.branch_specs(config.model)
  assert [s.name for s in sides] == [f'gsop_psdr{i + 1}' for i in range(num_sides)]
  assert registry.head_names(config.model) == ['logits'] + [s.name for s in sides]
  config.loss.alpha = 0.5  # Side branches take the main head's weight, not stage 5's beta (1).
  assert set(registry.loss_weights(config).values()) == {0.5}
  feature = jax.ShapeDtypeStruct((1, 14, 14, 2048), jnp.float32)
  variables = jax.eval_shape(lambda x: gsop.GSoPHead(head).init(
      jax.random.key(0), x, train=False), feature)
  layers = [(cin, cout) for cin, cout in zip([2048] + chain, chain)]
  assert registry.count_params(variables['params']) == sum(
      _conv_bn(*layer) for layer in layers) + _classifier(chain[-1])
  names = ['dr'] if option.startswith('dr=') else [f'psdr{i + 1}' for i in range(len(chain))]
  assert sorted(variables['params']) == sorted(names + ['fc'])
  stage5 = registry.create_backbone(config.model).stage_specs()[-1]
  for side, channels in zip(sides, chain):  # Each side branch reduces straight to the target.
    side_vars = jax.eval_shape(lambda x, s=side: branches.AuxBranch(
        s, stage5, 1000).init(jax.random.key(0), x, train=False),
                               jax.ShapeDtypeStruct((1, 14, 14, channels), jnp.float32))
    assert registry.count_params(side_vars['params']) == _conv_bn(channels, chain[-1]) + _classifier(
        chain[-1])


def _tiny_config(variant: str):
  """ResNet-18-s1 on one block per stage (every width kept) with one small branch."""
  config = imagenet_r18.get_config(variant)
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.branches.blocks = (1, 0, 0, 0)
  config.model.branches.channels = (8, 8, 8, 8)
  return config


@pytest.mark.parametrize('variant', ['isqrt_cov,psdr=8,delta=0.5,psdr_aux', 'mpn_cov,dr=8'])
def test_detached_second_order_network_is_bit_identical(variant):
  config = _tiny_config(variant)
  model, deployed = registry.create(config.model), registry.create_backbone(config.model)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = registry.init_variables(model, jax.random.key(0), x)
  outputs = jax.jit(lambda v: model.apply(v, x, train=False))(variables)
  names = [s.name for s in registry.branch_specs(config.model)]
  detached = export.detach(variables, names)
  logits, features = jax.jit(lambda v: deployed.apply(v, x, train=False))(detached)
  np.testing.assert_array_equal(logits, outputs['logits'])
  assert set(detached['params']) == set(jax.eval_shape(lambda x: deployed.init(
      jax.random.key(1), x, train=False), x)['params'])
  assert 'gsop' in detached['params'] and not any(n in detached['params'] for n in names)
  # ResNet-18's 512 channels: PSDR 256, 128, 64, 32, 16, 8 (delta 0.5), side branches on the first 5.
  assert len(names) == (6 if variant.startswith('isqrt') else 1)
  assert features['pre_logits'].shape == (2, 36)  # 8 channels -> 8 * 9 / 2.
  assert sorted(losses.head_logits(outputs)) == sorted(registry.head_names(config.model))


def _sgd_losses(pool: str, steps: int) -> list:
  """Losses of `steps` plain SGD steps (lr 0.1) of a one-block-per-stage ResNet-s1 with the
  second-order head `pool` (direct DR to 8 channels) on 8 fixed 32x32 images."""
  head = branches.BranchSpec(name='gsop', stage='stage5', stage_index=3, attach='stage5',
                             num_blocks=0, pool=pool, pool_channels=8)
  model = resnet.ResNet(stage_sizes=(1, 1, 1, 1), block_cls=resnet.BasicBlock, num_filters=8,
                        num_classes=10, last_stride=1, head=functools.partial(gsop.GSoPHead, head))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
  variables = registry.init_variables(model, jax.random.key(0), x)

  def loss_fn(params):
    (logits, _), _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                                 train=True, mutable=['batch_stats'])
    return losses.dsop_loss(outputs={'logits': logits, 'aux_logits': {}}, labels=labels,
                            weights={'logits': 1.0})[0]

  params, history = variables['params'], []
  step = jax.jit(jax.value_and_grad(loss_fn))
  for _ in range(steps):
    loss, grads = step(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    history.append(float(loss))
  return history


def test_mpn_cov_network_trains_like_isqrt_cov():
  """Both heads compute Sigma^{1/2}, so SGD through MPN-COV's eigendecomposition backward pass
  follows iSQRT-COV's curve. The 2x2 stage-5 maps give covariances of rank 3 or less, so that
  backward pass meets zero eigenvalues at every step; the gradients stay finite."""
  mpn = _sgd_losses('mpn_cov', 15)
  isqrt = _sgd_losses('isqrt_cov', 15)
  print('MPN-COV', mpn, 'iSQRT-COV', isqrt)
  np.testing.assert_allclose(mpn, isqrt, rtol=0.05)
  assert mpn[-1] < 0.5 * mpn[0], mpn


def test_invalid_head_fields_are_named():
  config = imagenet_r18.get_config('isqrt_cov')
  for field, value, allowed in (('pool', 'max', 'allowed: gap'), ('channels', 0, 'positive'),
                                ('reduction', 'pca', 'allowed: direct, psdr'),
                                ('psdr_delta', 1.0, 'open interval'), ('num_iters', 0, '>= 1'),
                                ('dropout', 1.0, r'\[0, 1\)')):
    bad = imagenet_r18.get_config('isqrt_cov')
    setattr(bad.model.head, field, value)
    with pytest.raises(ValueError, match=f'config.model.head.{field} = .* is invalid: .*{allowed}'):
      registry.validate_model_config(bad.model)
  assert registry.head_spec(config.model).pool == 'isqrt_cov'
  from dsop_jax.configs import cifar_resnet20  # pylint: disable=g-import-not-at-top
  cifar = cifar_resnet20.get_config('cifar10')
  cifar.model.head = config.model.head
  with pytest.raises(ValueError, match='built on the ImageNet networks .* not on resnet20'):
    registry.validate_model_config(cifar.model)
  old = cifar_resnet20.get_config('cifar10').model.to_dict()
  del old['head']  # A model_config.json from before the field existed: the first-order network.
  assert registry.head_spec(config_files.upgrade(old, 'old', section='model')) is None


def test_head_options_need_a_second_order_head():
  with pytest.raises(ValueError, match="option 'psdr=64' configures the second-order head: add"):
    imagenet_r18.get_config('psdr=64')
  for bad in ('dr=0', 'psdr=x', 'delta=1.5', 'delta=0'):
    with pytest.raises(ValueError, match=f"option '{bad}' is invalid: allowed: .*psdr_aux"):
      imagenet_r18.get_config(f'isqrt_cov,{bad}')
  config = imagenet_r50_gsop.get_config('mpn_cov,psdr=128,delta=0.5,psdr_aux')
  head = config.model.head
  assert (head.pool, head.channels, head.reduction, head.psdr_delta, head.psdr_aux) == (
      'mpn_cov', 128, 'psdr', 0.5, True)
  assert config.model.branches.blocks == (0, 0, 0, 0) and config.model.last_stride == 1
