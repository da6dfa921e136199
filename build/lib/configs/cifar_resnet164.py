"""Pre-activation ResNet-164 (bottleneck) with DSoP-Net on CIFAR, 18 branches (Table IV: [0,0,3]x6).

Paper: Table V (CIFAR-10) 4.55% top-1 error, plain 5.46; Table VI (CIFAR-100) 21.06%, plain 24.33.

  python -m dsop_jax.main --config=configs/cifar_resnet164.py:cifar10 --workdir=...        # DSoP-Net
  python -m dsop_jax.main --config=configs/cifar_resnet164.py:cifar100,plain --workdir=... # baseline
  python -m dsop_jax.main --config=configs/cifar_resnet164.py:cifar100,plain,original --workdir=...
      # the baseline on its own paper's recipe, which trained the plain numbers above
      # (cifar_base.ORIGINAL_RECIPES); ',plain' alone uses DSoP-Net's schedule.
"""

import ml_collections

from dsop_jax import config_files

cifar_base = config_files.sibling(__file__, 'cifar_base')


def get_config(argument: str = 'cifar100') -> ml_collections.ConfigDict:
  config = cifar_base.base_config()
  config.model.name = 'preact_resnet164'
  config.model.branches.pattern = '[0,0,3]x6'  # Table IV.
  return cifar_base.apply_options(config, argument)
