"""EfficientNet-b0: the published size, features, MBConv details, and its DSoP/second-order configs."""

import flax.linen as nn
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsop_jax.configs import imagenet_efficientnet_b0
from dsop_jax.models import dsop
from dsop_jax.models import efficientnet
from dsop_jax.models import gsop
from dsop_jax.models import layers
from dsop_jax.models import registry
from dsop_jax.tools import complexity
from dsop_jax.training import losses as dsop_losses
from dsop_jax.training import optim
from dsop_jax.training import steps
from tests import conftest

IMAGE = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)


def test_parameters_and_macs_match_the_published_model():
  """5,288,548 parameters (timm's efficientnet_b0; the paper's 5.3M) and 0.39 GMACs (Tan & Le)."""
  rep = complexity.report(imagenet_efficientnet_b0.get_config('plain'))
  assert rep['params_test'] == 5_288_548
  assert rep['gflops_test'] == pytest.approx(0.39, abs=0.005)


def test_features_and_stage_specs():
  model = efficientnet.EfficientNetB0(num_classes=10)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), IMAGE)
  _, features = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, IMAGE)
  stage_shapes = {k: v.shape[1:] for k, v in features.items() if 'block' not in k}
  assert stage_shapes == {
      'stem': (112, 112, 32), 'stage1': (112, 112, 16), 'stage2': (56, 56, 24),
      'stage3': (28, 28, 40), 'stage4': (14, 14, 80), 'stage5': (14, 14, 112),
      'stage6': (7, 7, 192), 'stage7': (7, 7, 320), 'head_conv': (7, 7, 1280),
      'pre_logits': (1280,)}
  assert sum('block' in k for k in features) == 16
  specs = model.stage_specs()
  assert [(s.name, s.num_blocks, s.channels, s.stride) for s in specs][3:] == [
      ('stage4', 3, 80, 2), ('stage5', 3, 112, 1), ('stage6', 4, 192, 2), ('stage7', 1, 320, 1)]
  assert model.head_input() == ('head_conv', 1280)
  # The squeeze width is a quarter of the block's input channels: stage 4's first block reads 40.
  se = variables['params']['stage4_block1']['se']
  assert se['fc1']['kernel'].shape == (240, 10) and se['fc2']['kernel'].shape == (10, 240)
  assert variables['params']['stage1_block1'].keys() == {'dw_conv', 'dw_bn', 'se', 'project_conv',
                                                         'project_bn'}  # Expansion 1.


def test_stochastic_depth_drops_whole_residual_branches_per_image():
  block = efficientnet.MBConvBlock(
      filters=8, conv=layers.conv_def(), norm=layers.norm_def(False), expansion=2, drop_path=0.5,
      deterministic=False)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 4, 4, 8)), jnp.float32)
  variables = block.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x)
  full = block.clone(deterministic=True).apply(variables, x)
  dropped = block.apply(variables, x, rngs={'dropout': jax.random.key(2)})
  residual, kept = np.asarray(full - x), np.asarray(dropped - x)
  is_dropped = np.all(kept == 0, axis=(1, 2, 3))
  np.testing.assert_allclose(kept[~is_dropped], 2.0 * residual[~is_dropped], rtol=1e-5, atol=1e-6)
  assert 16 < is_dropped.sum() < 48  # About half of 64 images.


def test_dsop_and_second_order_configs():
  dsop = imagenet_efficientnet_b0.get_config()
  specs = registry.branch_specs(dsop.model)
  assert [(s.name, s.attach, s.num_blocks, s.pool_channels, s.activation, s.dropout)
          for s in specs] == [('a_pds4', 'stage4', 3, 64, 'swish', 0.2),
                              ('a_pds7', 'head_conv', 1, 64, 'swish', 0.2)]
  second = imagenet_efficientnet_b0.get_config('plain,isqrt_cov')
  head = registry.head_spec(second.model)
  assert (head.attach, head.pool_channels, head.activation, head.dropout) == (
      'head_conv', 64, 'swish', 0.2)
  rep = complexity.report(second)
  # GAP + FC (1280 * 1000 + 1000) replaced by DR 1280 -> 64 + BN and an FC on 64 * 65 / 2 values.
  assert rep['params_test'] == 5_288_548 - 1_281_000 + 1280 * 64 + 2 * 64 + 2080 * 1000 + 1000
  assert rep['head']['pooled_dim'] == 2080
  assert (dsop.optim.name, dsop.optim.learning_rate, dsop.train.batch_size) == ('rmsprop', 0.048, 768)


def test_swish_reduction_in_the_branches():
  """The branch DR uses the backbone's activation: with all-ones weights and BN statistics, a
  -1 input gives the pre-activation (-3 - 1) / sqrt(1 + 1e-5) + 1, which swish keeps negative."""
  spec = registry.branch_specs(imagenet_efficientnet_b0.get_config().model)[1]
  dr = layers.ConvNormAct(4, layers.conv_def(), layers.norm_def(False),
                          layers.ACTIVATIONS[spec.activation])
  x = -jnp.ones((1, 2, 2, 3))
  variables = jax.tree.map(jnp.ones_like, dr.init(jax.random.key(0), x))
  pre = -4.0 / np.sqrt(1 + 1e-5) + 1.0
  np.testing.assert_allclose(dr.apply(variables, x), np.full((1, 2, 2, 4), nn.swish(pre)),
                             rtol=1e-5)
  assert float(nn.swish(pre)) < 0


def test_tiny_efficientnet_dsop_trains_with_the_configs_rmsprop():
  """The DSoP config's code path at a size this CPU compiles quickly (the full network takes a
  forward pass in configs_test): a two-stage EfficientNet with a branch per stage and the
  second-order head with PSDR side branches (the last branch on the head conv), trained by the config's own optimiser (RMSProp, the
  exponential schedule after warm-up) in the real train step, then evaluated."""
  config = imagenet_efficientnet_b0.get_config('isqrt_cov,psdr=8,psdr_aux')
  config.optim.warmup_epochs = 0.0
  stage_config = ((1, 3, 1, 8, 1), (6, 3, 2, 16, 2))
  backbone = efficientnet.EfficientNet(stage_config=stage_config, head_filters=32, num_classes=10)
  layout = conftest.branches_config(blocks=(1, 1), channels=(8, 8), reduction=('direct',) * 2,
                                    dropout=0.2)
  # The last branch reads the head conv's output, with one block of the head's conv + BN + swish.
  branches = registry.layout_branches(backbone.stage_specs(), layout, 'swish',
                                    backbone.branch_end_stage())
  assert [b.attach for b in branches] == ['stage1', 'head_conv']
  head = registry.head_spec(config.model, backbone)
  sides = gsop.side_specs(head, 32)
  model = dsop.DSoPNet(backbone=backbone.clone(head=functools.partial(gsop.GSoPHead, head)),
                       branches=tuple(branches + sides), num_classes=10)
  weights = {'logits': 1.0, **{s.name: 1.0 for s in branches + sides}}
  tx = optim.create_optimizer(config, steps_per_epoch=2, num_steps=20)
  state = registry.jit_init(steps.state_init_fn(model, tx, 32))(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
           'mask': jnp.ones(16, bool)}
  step = jax.jit(steps.make_train_step(dsop_losses.dsop_objective(model, weights), tx))
  losses = []
  for _ in range(12):
    state, metrics = step(state, batch, jax.random.key(1))
    assert float(metrics['nonfinite']) == 0.0
    losses.append(float(metrics['logits/loss']))
  assert losses[-1] < 0.8 * losses[0], losses  # Measured: 2.27 -> 1.54.
  assert {f'{n}/loss' for n in weights} <= set(metrics)
  sums = jax.jit(functools.partial(steps.eval_step, heads_fn=steps.training_model_heads(model)))(
      {'params': state.params, 'batch_stats': state.batch_stats}, batch)
  assert float(sums['count']) == 16 and set(weights) == {k.split('/')[0] for k in sums} - {'count'}
