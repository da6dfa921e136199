"""WRN-22-10 with DSoP-Net on CIFAR, 6 branches (Table IV: [1,0,2]).

Paper: Table V (CIFAR-10) 3.91% top-1 error, plain 4.44; Table VI (CIFAR-100) 18.91%, plain 20.75.

  python -m dsop_jax.main --config=configs/cifar_wrn22_10.py:cifar10 --workdir=...        # DSoP-Net
  python -m dsop_jax.main --config=configs/cifar_wrn22_10.py:cifar100,plain --workdir=... # baseline
  python -m dsop_jax.main --config=configs/cifar_wrn22_10.py:cifar100,plain,original --workdir=...
      # the baseline on its own paper's recipe, which trained the plain numbers above
      # (cifar_base.ORIGINAL_RECIPES); ',plain' alone uses DSoP-Net's schedule.
"""

import ml_collections

from dsop_jax import config_files

cifar_base = config_files.sibling(__file__, 'cifar_base')


def get_config(argument: str = 'cifar100') -> ml_collections.ConfigDict:
  config = cifar_base.base_config()
  config.model.name = 'wrn22_10'
  config.model.branches.pattern = '[1,0,2]'  # Table IV.
  cifar_base.wrn_schedule(config)
  return cifar_base.apply_options(config, argument)
