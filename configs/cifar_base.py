"""Shared CIFAR settings of the paper (Section V-D, Table IV): stage patterns, <=128 pooled channels
with direct DR, dropout 0.5 before each branch classifier, betas 0.1/0.2/0.3 for stages 1-3.

Each cifar_*.py file sets the backbone and its Table IV stage pattern on `base_config()`, then
applies its config argument with `apply_options`: comma-separated options (`common.apply_options`),
'cifar10' or 'cifar100' (the dataset; default cifar100), 'plain' for the first-order baseline, and
'original' for the recipe of the backbone's own paper (ORIGINAL_RECIPES) instead of DSoP-Net's:
  python -m dsop_jax.main --config=configs/cifar_resnet110.py:cifar10 --workdir=...
  python -m dsop_jax.main --config=configs/cifar_resnet110.py:cifar10,plain --workdir=...
  python -m dsop_jax.main --config=configs/cifar_resnet110.py:cifar10,plain,original --workdir=...
"""

from typing import Dict, Optional

import ml_collections

from dsop_jax import config_files

common = config_files.sibling(__file__, 'common')

NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}


def _dataset(name: str) -> common.Handler:
  def handler(config: ml_collections.ConfigDict, _: str) -> None:
    config.data.dataset = name
    config.model.num_classes = NUM_CLASSES[name]
  return handler


def _plain(config: ml_collections.ConfigDict, _: str) -> None:
  """Without branches: the first-order baseline of Tables V-VI."""
  config.model.branches.pattern = ''


def _original(config: ml_collections.ConfigDict, _: str) -> None:
  family = next(f for f in ORIGINAL_RECIPES if config.model.name.startswith(f))
  recipe = dict(ORIGINAL_RECIPES[family])
  config.train.batch_size = 128
  config.train.num_epochs = recipe.pop('num_epochs')
  config.optim.update(name='sgd', momentum=0.9, nesterov=True, schedule='step', warmup_epochs=0.0,
                      **recipe)


OPTIONS = {'cifar10': _dataset('cifar10'), 'cifar100': _dataset('cifar100'), 'plain': _plain,
           'original': _original}


def apply_options(config: ml_collections.ConfigDict, argument: str,
                  options: Optional[Dict[str, common.Handler]] = None) -> ml_collections.ConfigDict:
  """The config argument on `config`: OPTIONS, or the given `options` instead."""
  return common.apply_options(config, argument, OPTIONS if options is None else options)


# ',original': the recipe of each backbone's own paper, as its official code runs it, which trained
# the "Original" numbers Tables V and VI quote (each decay epoch is the number of epochs completed
# before the rate changes). `:plain` alone retrains the backbone on DSoP-Net's Section V-D schedule.
# - Pre-activation ResNets (He et al. 2016: "mini-batch size of 128 ... learning rate starts at 0.1,
#   divided by 10 at 32k and 48k iterations, terminated at 64k"), as fb.resnet.torch runs CIFAR,
#   which KaimingHe/resnet-1k-layers trains with (train.lua: `nesterov = true`; the rate x0.1 from
#   epoch 81 and 122, 1-based; opts.lua: 164 epochs, weight decay 1e-4).
# - Wide ResNets (szagoruyko/wide-residual-networks, scripts/train_cifar.sh): lr 0.1, x0.2 at
#   epochs 60, 120, 160 (1-based), 200 epochs, `nesterov=true`, weight decay 5e-4 (train.lua),
#   batch 128. Not reproduced: its reflection padding for the random crops (zero padding here).
# - ResNeXt-29 (facebookresearch/ResNeXt README: "-weightDecay 5e-4 -batchSize 128 -nEpochs 300
#   -LR 0.1"; train.lua: nesterov, x0.1 once epoch / 300 > 0.49 and > 0.74, i.e. from epoch 148
#   and 223, 1-based).
#   The README adds that "in the arXiv paper CIFAR results are based on pre-activated bottleneck
#   blocks and a batch size of 256" (the numbers Tables V/VI quote), but its code has only
#   post-activation bottlenecks (models/resnext.lua, resnext_B/C): ',original' runs the code's
#   documented command, which the README reports as the better one, not that arXiv setting.
# DSoP-Net's own schedules differ: pre-act ResNets lr 0.3, 110 epochs, /10 at 80 and 95, no
# Nesterov; WRN and ResNeXt the same rates and epochs as their originals but plain momentum.
ORIGINAL_RECIPES = {
    'preact': dict(num_epochs=164.0, learning_rate=0.1, decay_epochs=(80, 121), decay_factor=0.1,
                   weight_decay=1e-4),
    'wrn': dict(num_epochs=200.0, learning_rate=0.1, decay_epochs=(59, 119, 159),
                decay_factor=0.2, weight_decay=5e-4),
    'resnext': dict(num_epochs=300.0, learning_rate=0.1, decay_epochs=(147, 222), decay_factor=0.1,
                    weight_decay=5e-4),
}


def wrn_schedule(config: ml_collections.ConfigDict) -> None:
  """WRN schedule (Section V-D): 200 epochs, lr 0.1 divided by 5 at 60, 120, 160, wd 5e-4."""
  config.train.num_epochs = 200.0
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.decay_epochs = (60, 120, 160)
  config.optim.decay_factor = 0.2


# AdaHessian's image_classification/main.py (at 85ebc00): `MultiStepLR(optimizer, [80, 120])` and,
# in `for epoch in range(1, args.epochs + 1)`, `scheduler.step()` before the epoch's batches, so
# epoch 80 (1-based) already runs at the lower rate: the decays come after 79 and 119 completed
# epochs. Its SGD run (sgd.sh, Table IX(a)'s SGD row) is the same main.py.
STEP_BEFORE_EACH_EPOCH = (79, 119)


def adahessian_schedule(config: ml_collections.ConfigDict) -> None:
  """Table IX: AdaHessian with the settings of its official CIFAR code, which the paper says it
  used (github.com/amirgholami/adahessian): batch 256, 160 epochs, lr 0.15 divided by 10 after 79
  and 119 completed epochs (`STEP_BEFORE_EACH_EPOCH`), decoupled weight decay 5e-4 (divided by the initial rate as its main.py does, so the decay
  per step is lr_t / lr_0 * 5e-4 * p; `optim.create_optimizer`), betas (0.9, 0.999), eps 1e-4,
  Hessian power 1."""
  config.train.batch_size = 256
  config.train.num_epochs = 160.0
  config.optim.name = 'adahessian'
  config.optim.learning_rate = 0.15
  config.optim.weight_decay = 5e-4
  config.optim.decay_epochs = STEP_BEFORE_EACH_EPOCH
  config.optim.decay_factor = 0.1
  config.optim.eps = 1e-4
  config.optim.hessian_power = 1.0


def radam_schedule(config: ml_collections.ConfigDict) -> None:
  """Table IX: RAdam with the settings of its official CIFAR recipe, which the paper says it used
  (github.com/LiyuanLucasLiu/RAdam, cifar_imagenet/recipes.md, ResNet-20): batch 128, 164 epochs,
  lr divided by 10 after epochs 81 and 122, betas (0.9, 0.999), decoupled weight decay 1e-4 (scaled
  by the learning rate, as its code does). The recipe sweeps the rate over 0.1, 0.03, 0.01 and
  0.003, and the paper does not say which it reports: 0.003 here, the rate of the adaptive
  optimisers in RAdam's own comparison (--config.optim.learning_rate=... for the others)."""
  config.train.batch_size = 128
  config.train.num_epochs = 164.0
  config.optim.name = 'radam'
  config.optim.learning_rate = 0.003
  config.optim.weight_decay = 1e-4
  config.optim.decay_epochs = (81, 122)
  config.optim.decay_factor = 0.1


def resnext_schedule(config: ml_collections.ConfigDict) -> None:
  """ResNeXt schedule (Section V-D): 300 epochs, lr 0.1 divided by 10 at 150, 225, wd 5e-4."""
  config.train.num_epochs = 300.0
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.decay_epochs = (150, 225)


def base_config() -> ml_collections.ConfigDict:
  """Pre-activation ResNet-110 on CIFAR-100 with the Table IV layout (common.get_config's fields,
  the CIFAR values); the cifar_*.py files override the backbone fields."""
  config = common.get_config()
  config.model.name = 'preact_resnet110'  # Backbone (see dsop_jax.models.registry.BACKBONES).
  config.model.num_classes = NUM_CLASSES['cifar100']  # The 'cifar10' option sets 10.
  # BatchNorm statistics over the whole global batch (the paper does not say how its CIFAR batches
  # were split over GPUs).
  config.model.bn_group_size = 0
  # Table IV stage specification, the same for every stage, one entry per backbone block: a non-zero
  # entry plugs in a branch with that many blocks after that block. '' = no branches (plain network).
  config.model.branches.pattern = '[0,0,3]x6'
  config.model.branches.channels = (128, 128, 128)  # At most 128 pooled channels (direct DR above).
  config.model.branches.reduction = ('direct', 'direct', 'direct')  # Per stage: 'direct' or 'psdr'.
  config.model.branches.dropout = 0.5  # Dropout between pooling and the dense layer (Section V-D).
  config.loss.betas = (0.1, 0.2, 0.3)  # Weights of the branches of stages 1-3 (Section V-D).
  config.data.dataset = 'cifar100'  # TFDS name: cifar10 or cifar100 (the option sets it).
  config.data.image_size = 32  # CIFAR images are 32x32.
  config.data.shuffle_buffer = 50000  # The whole training set.
  config.train.batch_size = 128  # Global batch (Section V-D).
  config.train.num_epochs = 110.0  # Pre-activation ResNets (Section V-D).
  config.optim.learning_rate = 0.3  # Pre-activation ResNets: 0.3 (Section V-D).
  config.optim.weight_decay = 1e-4  # Pre-activation ResNets: 1e-4; WRN/ResNeXt: 5e-4.
  config.optim.decay_epochs = (80, 95)  # Pre-activation ResNets: /10 at 80 and 95.
  config.eval.batch_size = 200  # Global eval batch (the last one is padded and masked).
  return config


def get_config(argument: str = 'cifar100') -> ml_collections.ConfigDict:
  """Pre-activation ResNet-110 (cifar_resnet110.py's network) with the config argument applied."""
  return apply_options(base_config(), argument)
