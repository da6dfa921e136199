"""Plain SE-ResNeXt-101 32x4d (standard stride): the strongest knowledge-distillation teacher of
Table II (the ResNet-50 it teaches reaches 23.46 / 6.66 there). 48,955,416 parameters, as the
reference SENet code.

  python -m dsop_jax.main --config=configs/imagenet_seresnext101.py --workdir=DIR   # the teacher
  python -m dsop_jax.main --config=configs/imagenet_r50.py:s2,plain --config.distill.teacher=DIR \
      --workdir=...                                                                  # the student
  python -m dsop_jax.complexity --config=configs/imagenet_seresnext101.py
The paper reports no accuracy of its own for this network.
"""

import ml_collections

from dsop_jax import config_files

imagenet_base = config_files.sibling(__file__, 'imagenet_base')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  return imagenet_base.plain_standard_config('seresnext101_32x4d', variant)
