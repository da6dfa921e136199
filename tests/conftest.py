"""Shared tiny models and configs for the tests."""

import functools

import ml_collections

from dsop_jax import cifar_backbones
from dsop_jax import resnet

# A 4-stage ImageNet-style ResNet with 4..32 channels and one basic block per stage.
TinyResNet = functools.partial(resnet.ResNet, stage_sizes=(1, 1, 1, 1), block_cls=resnet.BasicBlock,
                               num_filters=4, num_classes=5)
# A 3-stage pre-activation CIFAR ResNet with 3 blocks per stage and 4/8/8 channels.
TinyPreAct = functools.partial(cifar_backbones.PreActResNet, stage_sizes=(3, 3, 3),
                               widths=(4, 8, 8), num_classes=5)


def branches_config(**overrides) -> ml_collections.ConfigDict:
  """A `config.model.branches` dict for 4 stages; override any field."""
  cfg = ml_collections.ConfigDict(dict(
      blocks=(1, 1, 1, 1), pattern='', channels=(4, 4, 8, 8), pool='isqrt_cov',
      reduction=('direct',) * 4, psdr_delta=0.25, psdr_aux=True, num_iters=5, dropout=0.0))
  cfg.update(overrides)
  return cfg
