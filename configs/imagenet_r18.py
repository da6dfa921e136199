"""ResNet-18-s1 with DSoP-Net, Table I layout (2 blocks per branch, 64/128/256/256 pooled channels).

Paper (ImageNet, single centre crop, top-1/top-5 error %):
  DSoP-Net ResNet-18-s1: 28.69 / 9.85 (Tables VIII, IX)   python -m dsop_jax.main --config=configs/imagenet_r18.py --workdir=...
  plain ResNet-18-s1:    30.11 / 10.78                    python -m dsop_jax.main --config=configs/imagenet_r18.py:plain --workdir=...
Complexity (Table I: 100.6M / 11.7M parameters, 7.26 / 3.06 GFLOPs):
  python -m dsop_jax.complexity --config=configs/imagenet_r18.py
Standard-stride variants: the ':s2' option.
"""

import ml_collections

from configs import imagenet_base


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = imagenet_base.get_config()
  config.model.name = 'resnet18'
  return imagenet_base.apply_variant(config, variant)
