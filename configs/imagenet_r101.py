"""Plain ResNet-101 (standard stride): the Table I 101-layer column (44.5M parameters, no branches)
and a knowledge-distillation teacher of Table II.

  python -m dsop_jax.main --config=configs/imagenet_r101.py --workdir=...
  python -m dsop_jax.complexity --config=configs/imagenet_r101.py
The paper reports no ResNet-101 accuracy of its own (torchvision's reference: 22.63 / 6.44).
"""

import ml_collections

from dsop_jax import config_files

imagenet_base = config_files.sibling(__file__, 'imagenet_base')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  return imagenet_base.plain_standard_config('resnet101', variant)
