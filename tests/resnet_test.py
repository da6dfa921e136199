"""ImageNet ResNets: exact torchvision parameter counts, feature names and shapes, s1 vs s2."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsop_jax.models import registry
from dsop_jax.models import resnet


def _abstract(module, size=32):
  image = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x, train=False),
                        image)


@pytest.mark.parametrize('cls, torchvision_count', [
    (resnet.ResNet18, 11_689_512), (resnet.ResNet34, 21_797_672), (resnet.ResNet50, 25_557_032),
    (resnet.ResNet101, 44_549_160), (resnet.ResNet152, 60_192_808),
    (resnet.SEResNeXt101_32x4d, 48_955_416)])  # The reference SENet code's count (48.96M).
@pytest.mark.parametrize('last_stride', [1, 2])
def test_parameter_counts_equal_torchvision(cls, torchvision_count, last_stride):
  _, variables = _abstract(cls(last_stride=last_stride))
  assert registry.count_params(variables['params']) == torchvision_count


@pytest.mark.parametrize('last_stride, stage5_size', [(2, 2), (1, 4)])
def test_features_names_and_shapes(last_stride, stage5_size):
  (logits, features), _ = _abstract(resnet.ResNet50(last_stride=last_stride, num_classes=7), 64)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  stage_shapes = {k: v.shape for k, v in features.items() if 'block' not in k}
  assert stage_shapes == {
      'stem': (2, 16, 16, 64), 'stage2': (2, 16, 16, 256), 'stage3': (2, 8, 8, 512),
      'stage4': (2, 4, 4, 1024), 'stage5': (2, stage5_size, stage5_size, 2048),
      'pre_logits': (2, 2048)}
  assert sorted(k for k in features if 'block' in k) == sorted(
      f'stage{s}_block{b}' for s, n in zip(range(2, 6), (3, 4, 6, 3)) for b in range(1, n + 1))


def test_stage_specs_describe_the_stages():
  specs = resnet.ResNet18(last_stride=1).stage_specs()
  assert [(s.name, s.num_blocks, s.channels, s.stride) for s in specs] == [
      ('stage2', 2, 64, 1), ('stage3', 2, 128, 2), ('stage4', 2, 256, 2), ('stage5', 2, 512, 1)]
  assert [s.channels for s in resnet.ResNet50().stage_specs()] == [256, 512, 1024, 2048]


def test_tiny_forward_train_and_eval():
  model = functools.partial(resnet.ResNet, stage_sizes=(1, 1, 1, 1), block_cls=resnet.BasicBlock,
                            num_filters=4, num_classes=3)()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  (logits, _), updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'],
                                 updates['batch_stats'])
  assert all(jax.tree.leaves(moved))
  eval_logits, _ = model.apply(variables, x, train=False)
  assert not np.allclose(eval_logits, logits)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = resnet.ResNet18(num_classes=4, dtype=jnp.bfloat16)
  (logits, features), variables = _abstract(model)
  assert logits.dtype == jnp.float32 and features['stage3'].dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_squeeze_excitation_gates_each_channel_of_each_image():
  """The SE gate is sigmoid(W2 relu(W1 GAP(x) + b1) + b2), one value per image and channel."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 32)), jnp.float32)
  se = resnet.SqueezeExcitation(reduction=16)
  variables = se.init(jax.random.key(0), x)
  p = jax.tree.map(np.asarray, variables['params'])
  assert p['fc1']['kernel'].shape == (32, 2) and p['fc2']['kernel'].shape == (2, 32)
  pooled = np.asarray(x).mean(axis=(1, 2))
  hidden = np.maximum(pooled @ p['fc1']['kernel'] + p['fc1']['bias'], 0)
  gate = 1 / (1 + np.exp(-(hidden @ p['fc2']['kernel'] + p['fc2']['bias'])))
  np.testing.assert_allclose(se.apply(variables, x), np.asarray(x) * gate[:, None, None, :],
                             rtol=1e-5, atol=1e-6)
