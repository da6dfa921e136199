"""ResNet-20 with DSoP-Net on CIFAR-10: Table IX(a), the optimiser comparison.

"We use the same hyper parameter settings reported in the original paper of each optimizer": both
optimiser papers train the post-activation CIFAR ResNet-20 of the "bearpaw" pytorch-classification
code (models/cifar/resnet.py; `cifar_backbones.ResNet20`, 272,474 parameters), and the paper's
plain numbers are theirs (AdaHessian's paper: SGD 7.92, AdaHessian 7.87; RAdam's: RAdam 8.62).
Each row therefore runs the recipe of the optimiser paper it compares with:
  SGD:        7.59 / 7.92   AdaHessian's SGD run (github.com/amirgholami/adahessian,
                            image_classification/config/resnet20_cifar10/sgd.sh and main.py's
                            defaults): batch 256, 160 epochs, lr 0.1 divided by 10 after 79 and 119
                            completed epochs (its scheduler steps before each epoch),
                            momentum 0.9, weight decay 5e-4 (coupled).
                            python -m dsop_jax.main --config=configs/cifar_resnet20.py:cifar10 --workdir=...
                            python -m dsop_jax.main --config=configs/cifar_resnet20.py:cifar10,plain --workdir=...
  AdaHessian: 7.70 / 7.87   --config=configs/cifar_resnet20.py:cifar10,adahessian (cifar10,plain,adahessian):
                            AdaHessian's own settings (cifar_base.adahessian_schedule).
  RAdam:      8.07 / 8.62   --config=configs/cifar_resnet20.py:cifar10,radam (cifar10,plain,radam):
                            RAdam's recipe (cifar_base.radam_schedule); its learning rate is this
                            config's choice (the paper does not say).
(CIFAR-10 top-1 error %, with DSoP-Net / plain.) Table IX does not give the branch layout; the
Table IV pattern of ResNet-110 ([0,0,3], one 3-block branch at the end of each 3-block stage) is
used. Not reproduced: PyTorch's default initialisation of the classifier (Flax's LeCun normal here).
"""

import ml_collections

from dsop_jax import config_files

cifar_base = config_files.sibling(__file__, 'cifar_base')


def sgd_schedule(config: ml_collections.ConfigDict) -> None:
  """Table IX(a)'s SGD row: the SGD run of AdaHessian's CIFAR code (sgd.sh: --lr 0.1 --optimizer
  sgd --depth 20, main.py's defaults otherwise): batch 256, 160 epochs, lr divided by 10 after 79
  and 119 completed epochs (cifar_base.STEP_BEFORE_EACH_EPOCH), momentum 0.9, weight decay 5e-4."""
  config.train.batch_size = 256
  config.train.num_epochs = 160.0
  config.optim.name = 'sgd'
  config.optim.learning_rate = 0.1
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.decay_epochs = cifar_base.STEP_BEFORE_EACH_EPOCH
  config.optim.decay_factor = 0.1


def _optimiser(schedule) -> cifar_base.common.Handler:
  def handler(config: ml_collections.ConfigDict, _: str) -> None:
    if config.optim.name != 'sgd':
      raise ValueError("config argument options 'adahessian' and 'radam' are two optimisers; "
                       'give one.')
    schedule(config)
  return handler


OPTIONS = {**{k: v for k, v in cifar_base.OPTIONS.items() if k != 'original'},
           'adahessian': _optimiser(cifar_base.adahessian_schedule),
           'radam': _optimiser(cifar_base.radam_schedule)}


def get_config(argument: str = 'cifar10') -> ml_collections.ConfigDict:
  """Options: 'cifar10' (default) or 'cifar100', 'plain', and 'adahessian' or 'radam' (the rows
  are already their optimiser papers' recipes, so there is no 'original')."""
  config = cifar_base.base_config()
  sgd_schedule(config)
  config.model.name = 'resnet20'
  config.model.branches.pattern = '[0,0,3]'  # Table IV.
  cifar_base.apply_options(config, 'cifar10', cifar_base.OPTIONS)  # Table IX(a) is on CIFAR-10.
  return cifar_base.apply_options(config, argument, OPTIONS)
