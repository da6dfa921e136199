"""ResNet-34-s1 with DSoP-Net, Table I layout (2 blocks per branch, 64/128/256/256 pooled channels).

Paper: Table I, 110.7M training / 21.8M test parameters, 9.81 / 5.61 GFLOPs.
  python -m dsop_jax.complexity --config=configs/imagenet_r34.py
"""

import ml_collections

from configs import imagenet_base


def get_config() -> ml_collections.ConfigDict:
  config = imagenet_base.get_config()
  config.model.name = 'resnet34'
  return config
