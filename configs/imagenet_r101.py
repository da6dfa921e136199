"""Plain ResNet-101 (standard stride): the Table I 101-layer column (44.5M parameters, no branches)
and a knowledge-distillation teacher of Table II.

  python -m dsop_jax.main --config=configs/imagenet_r101.py --workdir=...
  python -m dsop_jax.complexity --config=configs/imagenet_r101.py
The paper reports no ResNet-101 accuracy of its own (torchvision's reference: 22.63 / 6.44).
"""

import ml_collections

from configs import imagenet_base


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = imagenet_base.get_config()
  config.model.name = 'resnet101'
  config.model.last_stride = 2
  config.model.branches.blocks = (0, 0, 0, 0)
  return imagenet_base.apply_variant(config, variant)
