"""ResNet-34-s1 with DSoP-Net, Table I layout (2 blocks per branch, 64/128/256/256 pooled channels).

The paper gives no accuracy for ResNet-34 (only its training time, 97 hours on 8 P100s).
  DSoP-Net ResNet-34-s1:  python -m dsop_jax.main --config=configs/imagenet_r34.py --workdir=...
  plain ResNet-34-s1:     python -m dsop_jax.main --config=configs/imagenet_r34.py:plain --workdir=...
Complexity (Table I: 110.7M / 21.8M parameters, 9.81 / 5.61 GFLOPs):
  python -m dsop_jax.complexity --config=configs/imagenet_r34.py
Standard-stride variants: the ':s2' option.
"""

import ml_collections

from dsop_jax import config_files

imagenet_base = config_files.sibling(__file__, 'imagenet_base')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = imagenet_base.get_config()
  config.model.name = 'resnet34'
  return imagenet_base.apply_variant(config, variant)
