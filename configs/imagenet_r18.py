"""ResNet-18-s1 with DSoP-Net, Table I layout (2 blocks per branch, 64/128/256/256 pooled channels).

Paper: Table I, 100.6M training / 11.7M test parameters, 7.26 / 3.06 GFLOPs; Table VIII, 28.69%
top-1 / 9.85% top-5 error on ImageNet (plain ResNet-18-s1: 30.11 / 10.78).
  python -m dsop_jax.complexity --config=configs/imagenet_r18.py
"""

import ml_collections

from configs import imagenet_base


def get_config() -> ml_collections.ConfigDict:
  config = imagenet_base.get_config()
  config.model.name = 'resnet18'
  return config
