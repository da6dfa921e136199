"""WRN-28-10 with DSoP-Net on CIFAR, 6 branches (Table IV: [0,2,0,2]).

Paper: Table V (CIFAR-10) 3.81% top-1 error, plain 4.17; Table VI (CIFAR-100) 18.50%, plain 20.50.

  python -m dsop_jax.main --config=configs/cifar_wrn28_10.py:cifar10 --workdir=...        # DSoP-Net
  python -m dsop_jax.main --config=configs/cifar_wrn28_10.py:cifar100,plain --workdir=... # baseline
  python -m dsop_jax.main --config=configs/cifar_wrn28_10.py:cifar100,plain,original --workdir=...
      # the baseline on its own paper's recipe, which trained the plain numbers above
      # (cifar_base.ORIGINAL_RECIPES); ',plain' alone uses DSoP-Net's schedule.
"""

import ml_collections

from dsop_jax import config_files

cifar_base = config_files.sibling(__file__, 'cifar_base')


def get_config(argument: str = 'cifar100') -> ml_collections.ConfigDict:
  config = cifar_base.base_config()
  config.model.name = 'wrn28_10'
  config.model.branches.pattern = '[0,2,0,2]'  # Table IV.
  cifar_base.wrn_schedule(config)
  return cifar_base.apply_options(config, argument)
