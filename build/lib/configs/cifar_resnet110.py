"""Pre-activation ResNet-110 with DSoP-Net on CIFAR, 18 branches (Table IV: [0,0,3]x6).

Paper: Table V (CIFAR-10) 5.73% top-1 error, plain 6.37; Table VI (CIFAR-100) 25.43%, plain 26.88.

  python -m dsop_jax.main --config=configs/cifar_resnet110.py:cifar10 --workdir=...        # DSoP-Net
  python -m dsop_jax.main --config=configs/cifar_resnet110.py:cifar100,plain --workdir=... # baseline
  python -m dsop_jax.main --config=configs/cifar_resnet110.py:cifar100,plain,original --workdir=...
      # the baseline on its own paper's recipe, which trained the plain numbers above
      # (cifar_base.ORIGINAL_RECIPES); ',plain' alone uses DSoP-Net's schedule.
"""

import ml_collections

from dsop_jax import config_files

cifar_base = config_files.sibling(__file__, 'cifar_base')


def get_config(argument: str = 'cifar100') -> ml_collections.ConfigDict:
  config = cifar_base.base_config()
  config.model.name = 'preact_resnet110'
  config.model.branches.pattern = '[0,0,3]x6'  # Table IV.
  return cifar_base.apply_options(config, argument)
