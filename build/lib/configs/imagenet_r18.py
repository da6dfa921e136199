"""ResNet-18-s1 with DSoP-Net, Table I layout (2 blocks per branch, 64/128/256/256 pooled channels).

Paper (ImageNet, single centre crop, top-1/top-5 error %):
  DSoP-Net ResNet-18-s1: 28.69 / 9.85 (Tables VIII, IX)   python -m dsop_jax.main --config=configs/imagenet_r18.py --workdir=...
  plain ResNet-18-s1:    30.11 / 10.78                    python -m dsop_jax.main --config=configs/imagenet_r18.py:plain --workdir=...
Ablations:
  Table VIII, 64 pooled channels:  29.19 / 10.12 (5.69 GFLOPs, 32.7M)   --config=configs/imagenet_r18.py:ch64
  Table VIII, 128 pooled channels: 28.88 / 9.92 (5.95 GFLOPs, 51.3M)    --config=configs/imagenet_r18.py:ch128
  Table X, conv layers per branch 16,0,0,0 / 0,0,0,16 / 8,8,0,0 / 8,0,0,8 / 0,0,8,8:
    29.09/10.04, 28.88/9.92, 29.06/10.03, 29.00/9.98, 28.77/9.90
    --config=configs/imagenet_r18.py:blocks=8-0-0-0 (blocks=0-0-0-8, 4-4-0-0, 4-0-0-4, 0-0-4-4);
    the paper's parameter counts for these rows do not follow from its Table I branches (see
    docs/EXPERIMENTS.md).
Complexity (Table I: 100.6M / 11.7M parameters, 7.26 / 3.06 GFLOPs):
  python -m dsop_jax.complexity --config=configs/imagenet_r18.py
Standard-stride variants: the ':s2' option.
"""

import ml_collections

from dsop_jax import config_files

imagenet_base = config_files.sibling(__file__, 'imagenet_base')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = imagenet_base.get_config()
  config.model.name = 'resnet18'
  return imagenet_base.apply_variant(config, variant)
