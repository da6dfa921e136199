"""ResNet-50 with DSoP-Net: the paper's headline model.

Paper (ImageNet, Table II, top-1/top-5 error %):
  DSoP-Net ResNet-50-s1: 21.15 / 5.70   python -m dsop_jax.main --config=configs/imagenet_r50.py --workdir=...
  plain ResNet-50-s1:    23.57 / 6.85   python -m dsop_jax.main --config=configs/imagenet_r50.py:plain --workdir=...
  DSoP-Net ResNet-50-s2: 23.14 / 6.56   python -m dsop_jax.main --config=configs/imagenet_r50.py:s2 --workdir=...
  plain ResNet-50-s2:    23.85 / 7.13   python -m dsop_jax.main --config=configs/imagenet_r50.py:s2,plain --workdir=...
Knowledge-distillation baselines (Table II): a plain ResNet-50 student (3.86 GFLOPs, standard
stride) learning from a trained teacher in DIR (an export or a workdir):
  from ResNet-50-s1 (imagenet_r50.py:plain): 23.73 / 7.03; from ResNet-101 (imagenet_r101.py:s2,
  the standard network): 23.54 / 6.70; from SE-ResNeXt-101 (imagenet_seresnext101.py): 23.46 / 6.66
    --config=configs/imagenet_r50.py:s2,plain --config.distill.teacher=DIR
  (the paper gives neither T nor the soft-target weight: config.distill.temperature / soft_weight)
Ablations (ResNet-50-s1):
  Table VII, GAP in the branches, no reduction:  22.74 / 6.61   --config=configs/imagenet_r50.py:gap
  Table III / Section V-C, branches removed at epoch 30, 45, 60: 0.87/0.31, 0.41/0.14, 0.33/0.11
    points worse than 21.15 / 5.70              --config=configs/imagenet_r50.py:early30 (early45, early60)
  Table III, two-phase (branches trained 15 epochs on the fixed plain ResNet-50-s1 in DIR, lr 0.1,
  0.01 after 5 epochs, 0.001 after 10): 23.57 / 6.85
    --config=configs/imagenet_r50.py:two_phase --config.train.backbone_checkpoint=DIR

The second-order network (Table II's iSQRT-COV / MPN-COV rows, Table XI): configs/imagenet_r50_gsop.py.

Branch layout. Table I lists 3/4/13/3 bottlenecks in a_conv2_x..a_conv5_x with direct DR, but that
reading gives 156.5M / 14.30 GFLOPs against the table's own 181.9M / 13.45. The layout below, 3/4/6/3
bottlenecks (the text: branches have as many conv layers as the backbone) with PSDR at a_pds5 (the
2048 -> 1024 -> 256 example of Section IV-B), gives 183.7M / 13.43 GFLOPs, matching both columns
within 1%. The literal table reading is one override away:
  --config.model.branches.blocks="(3,4,13,3)" --config.model.branches.reduction="('direct','direct','direct','direct')"

  python -m dsop_jax.complexity --config=configs/imagenet_r50.py
"""

import ml_collections

from dsop_jax import config_files

imagenet_base = config_files.sibling(__file__, 'imagenet_base')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = imagenet_base.get_config()
  config.model.name = 'resnet50'
  config.model.branches.blocks = (3, 4, 6, 3)
  config.model.branches.channels = (64, 256, 256, 256)  # Table I, 50-layer column.
  config.model.branches.reduction = ('direct', 'direct', 'direct', 'psdr')
  return imagenet_base.apply_variant(config, variant)
