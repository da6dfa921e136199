"""Pre-activation ResNet-20 with DSoP-Net on CIFAR (Table IX(a), top-1 error on CIFAR-10: SGD 7.59%,
plain 7.92; AdaHessian 7.70%, plain 7.87). Table IX does not give its layout; the Table IV pattern of
ResNet-110 ([0,0,3], one 3-block branch at the end of each 3-block stage) is used.

  python -m dsop_jax.main --config=configs/cifar_resnet20.py:cifar10 --workdir=...        # DSoP-Net
  python -m dsop_jax.main --config=configs/cifar_resnet20.py:cifar10,plain --workdir=...  # baseline
  python -m dsop_jax.main --config=configs/cifar_resnet20.py:cifar10,adahessian --workdir=...
  python -m dsop_jax.main --config=configs/cifar_resnet20.py:cifar10,plain,adahessian --workdir=...
"""

import ml_collections

from configs import cifar_base


def get_config(argument: str = 'cifar100') -> ml_collections.ConfigDict:
  dataset, is_plain = cifar_base.parse_argument(argument, extra_options=('adahessian',))
  config = cifar_base.get_config(dataset)
  if 'adahessian' in argument.split(','):
    cifar_base.adahessian_schedule(config)
  config.model.name = 'preact_resnet20'
  config.model.branches.pattern = '[0,0,3]'  # Table IV.
  return cifar_base.plain(config, is_plain)
