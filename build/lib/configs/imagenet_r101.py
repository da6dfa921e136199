"""Plain ResNet-101: Table I's 101-layer column, and (with ':s2') a knowledge-distillation teacher
of Table II.

Table I's column is the -s1 network (conv5_x at 14 x 14, stride 1 in stage 5) without branches:
44.5M parameters and 10.01 GFLOPs. The Table II teacher is the standard network of the "PyTorch
official implementation of ResNet family models" (Section V-B), stride 2 in stage 5:
  python -m dsop_jax.main --config=configs/imagenet_r101.py --workdir=...       # Table I, -s1
  python -m dsop_jax.main --config=configs/imagenet_r101.py:s2 --workdir=DIR    # the teacher
  python -m dsop_jax.main --config=configs/imagenet_r50.py:s2,plain --config.distill.teacher=DIR \
      --workdir=...                                                              # its student
  python -m dsop_jax.complexity --config=configs/imagenet_r101.py
The paper reports no ResNet-101 accuracy of its own (torchvision's reference, s2: 22.63 / 6.44).
"""

import ml_collections

from dsop_jax import config_files

imagenet_base = config_files.sibling(__file__, 'imagenet_base')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """ResNet-101-s1 without branches; ':s2' is the standard-stride distillation teacher."""
  config = imagenet_base.plain_standard_config('resnet101', '')
  config.model.last_stride = 1  # Table I: conv5_x at 14 x 14.
  return imagenet_base.apply_variant(config, variant)
