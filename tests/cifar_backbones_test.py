"""CIFAR backbones: parameter counts against the published models, features and stage layout."""

import jax
import jax.numpy as jnp
import pytest

from dsop_jax.models import cifar_backbones as cb
from dsop_jax.models import registry


def _abstract(module):
  image = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x, train=False),
                        image)


@pytest.mark.parametrize('cls, count', [
    # Exact counts of the common PyTorch reference implementations (10 classes).
    (cb.WRN28_10, 36_479_194),          # Zagoruyko & Komodakis: 36.5M.
    (cb.PreActResNet164, 1_703_258),    # He et al. (identity mappings): 1.7M.
    (cb.ResNeXt29_8x64d, 34_426_698),   # Xie et al.: 34.4M.
    (cb.ResNeXt29_16x64d, 68_155_210),  # Xie et al.: 68.1M.
    (cb.PreActResNet110, 1_730_522),    # He et al.: 1.7M (1x1 projection shortcuts).
    (cb.WRN22_10, 26_797_914),
    (cb.PreActResNet20, 272_282),       # He et al.: 0.27M.
    # Post-activation, as bearpaw/pytorch-classification's models/cifar/resnet.py (depth 20), the
    # network AdaHessian's and RAdam's CIFAR code train (Table IX(a)).
    (cb.ResNet20, 272_474),
])
def test_parameter_counts(cls, count):
  _, variables = _abstract(cls(num_classes=10))
  assert registry.count_params(variables['params']) == count


@pytest.mark.parametrize('cls, blocks, channels', [
    (cb.PreActResNet110, 18, (16, 32, 64)), (cb.PreActResNet164, 18, (64, 128, 256)),
    (cb.WRN22_10, 3, (160, 320, 640)), (cb.WRN28_10, 4, (160, 320, 640)),
    (cb.ResNeXt29_8x64d, 3, (256, 512, 1024)), (cb.PreActResNet20, 3, (16, 32, 64)),
    (cb.ResNet20, 3, (16, 32, 64))])
def test_stages_and_features(cls, blocks, channels):
  model = cls(num_classes=100)
  specs = model.stage_specs()
  assert [(s.name, s.num_blocks, s.channels, s.stride) for s in specs] == [
      ('stage1', blocks, channels[0], 1), ('stage2', blocks, channels[1], 2),
      ('stage3', blocks, channels[2], 2)]
  (logits, features), _ = _abstract(model)
  assert logits.shape == (2, 100)
  for spec, size in zip(specs, (32, 16, 8)):
    assert features[spec.name].shape == (2, size, size, spec.channels)
    assert features[f'{spec.name}_block{blocks}'].shape == features[spec.name].shape
  assert features['pre_logits'].shape == (2, channels[2])


def test_preact_flags():
  assert all(s.preact for s in cb.WRN28_10().stage_specs())
  assert not any(s.preact for s in cb.ResNeXt29_8x64d().stage_specs())
  assert not any(s.preact for s in cb.ResNet20().stage_specs())
