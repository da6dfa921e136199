"""Pre-activation ResNet-20 with DSoP-Net on CIFAR-10: Table IX(a), the optimiser comparison.
Table IX does not give its layout; the Table IV pattern of ResNet-110 ([0,0,3], one 3-block branch
at the end of each 3-block stage) is used.

Paper (CIFAR-10 top-1 error %, with DSoP-Net / plain):
  SGD:        7.59 / 7.92   python -m dsop_jax.main --config=configs/cifar_resnet20.py:cifar10 --workdir=...
                            python -m dsop_jax.main --config=configs/cifar_resnet20.py:cifar10,plain --workdir=...
  AdaHessian: 7.70 / 7.87   --config=configs/cifar_resnet20.py:cifar10,adahessian (cifar10,plain,adahessian)
  RAdam:      8.07 / 8.62   --config=configs/cifar_resnet20.py:cifar10,radam (cifar10,plain,radam)
Each optimiser runs with the settings of its official code (cifar_base.adahessian_schedule,
cifar_base.radam_schedule); RAdam's learning rate is this config's choice (the paper does not say).
"""

import ml_collections

from dsop_jax import config_files

cifar_base = config_files.sibling(__file__, 'cifar_base')


def get_config(argument: str = 'cifar100') -> ml_collections.ConfigDict:
  dataset, is_plain = cifar_base.parse_argument(argument, extra_options=('adahessian', 'radam'))
  options = argument.split(',')
  if 'adahessian' in options and 'radam' in options:
    raise ValueError(f"config argument (dataset) = {argument!r} is invalid: ',adahessian' and "
                     "',radam' are two optimisers; give one.")
  config = cifar_base.get_config(dataset)
  if 'adahessian' in options:
    cifar_base.adahessian_schedule(config)
  if 'radam' in options:
    cifar_base.radam_schedule(config)
  config.model.name = 'preact_resnet20'
  config.model.branches.pattern = '[0,0,3]'  # Table IV.
  return cifar_base.plain(config, is_plain)
