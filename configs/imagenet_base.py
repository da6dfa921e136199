"""Shared ImageNet settings of the paper (Sections IV-V): ResNet-s1 DSoP-Net, Table I branch layout.

Not a paper row on its own: the imagenet_r*.py files import it and set the backbone. Complexity:
  python -m dsop_jax.complexity --config=configs/imagenet_base.py
"""

from typing import Any

import ml_collections

from dsop_jax import config_files
from dsop_jax.models import registry

common = config_files.sibling(__file__, 'common')

# Options that configure the second-order head, which need 'isqrt_cov' or 'mpn_cov' beside them.
_HEAD_OPTIONS = ('dr=', 'psdr=', 'delta=', 'psdr_aux')


def _number(text: str, kind: type) -> Any:
  """`text` as a positive `kind`, or None when it is not one."""
  try:
    value = kind(text)
  except ValueError:
    return None
  return value if value > 0 else None


def _stage_widths(config: ml_collections.ConfigDict) -> tuple:
  """Output channels of each stage of the config's backbone, read from the backbone itself."""
  constructor, _ = registry.BACKBONES[config.model.name]
  return tuple(s.channels for s in constructor(num_classes=config.model.num_classes).stage_specs())


def _blocks(config: ml_collections.ConfigDict, value: str) -> bool:
  blocks = value.split('-')
  if len(blocks) != 4 or not all(b.isdigit() for b in blocks):
    return False
  config.model.branches.blocks = tuple(int(b) for b in blocks)
  return True


def _early(epoch: float) -> common.Handler:
  def handler(config: ml_collections.ConfigDict, _: str) -> None:
    config.train.policy = 'early_removal'
    config.train.remove_branches_at_epoch = epoch
  return handler


def _reduction(kind: str) -> common.Handler:
  def handler(config: ml_collections.ConfigDict, value: str) -> bool:
    channels = _number(value, int)
    if channels is None:
      return False
    config.model.head.reduction, config.model.head.channels = kind, channels
    return True
  return handler


def _delta(config: ml_collections.ConfigDict, value: str) -> bool:
  delta = _number(value, float)
  if delta is None or delta >= 1:
    return False
  config.model.head.psdr_delta = delta
  return True


OPTIONS = {
    's2': lambda config, _: setattr(config.model, 'last_stride', 2),
    'plain': lambda config, _: setattr(config.model.branches, 'blocks',
                                       (0,) * len(config.model.branches.blocks)),
    'gap': lambda config, _: config.model.branches.update(pool='gap',
                                                          channels=_stage_widths(config)),
    'ch64': lambda config, _: setattr(config.model.branches, 'channels', (64, 64, 64, 64)),
    'ch128': lambda config, _: setattr(config.model.branches, 'channels', (64, 128, 128, 128)),
    'blocks=A-B-C-D': _blocks,
    'early30': _early(30.0), 'early45': _early(45.0), 'early60': _early(60.0),
    'two_phase': lambda config, _: two_phase_recipe(config),
    'radam': lambda config, _: radam_recipe(config),
    'radam_0005': lambda config, _: radam_recipe(config, 0.005),
    'adahessian': lambda config, _: adahessian_recipe(config),
    'isqrt_cov': lambda config, _: setattr(config.model.head, 'pool', 'isqrt_cov'),
    'mpn_cov': lambda config, _: setattr(config.model.head, 'pool', 'mpn_cov'),
    'dr=N': _reduction('direct'),
    'psdr=N': _reduction('psdr'),
    'delta=D': _delta,
    'psdr_aux': lambda config, _: setattr(config.model.head, 'psdr_aux', True),
}
VARIANTS = tuple(OPTIONS)


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """The config argument: comma-separated options, e.g. --config=configs/imagenet_r50.py:s2,plain.

  - 's2': standard stride (Table II's "-s2" rows); 'plain': no branches (the first-order baseline).
  - 'gap': GAP instead of iSQRT-COV in every branch, without channel reduction (Table VII).
  - 'ch64', 'ch128': 64 or 128 pooled channels per branch, 64/64/64/64 or 64/128/128/128
    (Table VIII).
  - 'blocks=A-B-C-D': S_a blocks per branch, 0 removing a branch (Table X: its "16,0,0,0" conv
    layers are blocks=8-0-0-0 for ResNet-18's two-conv blocks).
  - 'early30', 'early45', 'early60': remove the branches at that epoch (Section V-C, Table III).
  - 'two_phase': Table III's second phase, 15 epochs of branches on a fixed, trained backbone given
    by --config.train.backbone_checkpoint=DIR, on Section V-C's schedule: "Learning rate starts at
    0.1, and is reduced to 0.01 and 0.001 after 5 and 10 epochs, respectively" (`two_phase_recipe`).
  - 'radam', 'adahessian': the optimisers of Table IX(b) (`radam_recipe`, `adahessian_recipe`);
    'radam_0005': RAdam at its recipe's other rate, 0.005 (radam: 0.003).
  - 'isqrt_cov', 'mpn_cov': the second-order network, covariance pooling instead of GAP + FC at the
    end, kept at test time (Table II's iSQRT-COV / MPN-COV rows, Table XI); direct DR to 256
    channels unless 'dr=N' (direct DR to N) or 'psdr=N' (PSDR to N, Eq. 4) says otherwise.
    'delta=D' sets PSDR's decay factor (default 0.25); 'psdr_aux' adds its supervised side branches.
  """
  common.apply_options(config, variant, OPTIONS)
  head_options = [o for o in variant.split(',') if o.startswith(_HEAD_OPTIONS)]
  if head_options and config.model.head.pool == 'gap':
    raise ValueError(f'config argument option {head_options[0]!r} configures the second-order head: '
                     "add 'isqrt_cov' or 'mpn_cov'.")
  return config


def two_phase_recipe(config: ml_collections.ConfigDict) -> None:
  """Table III's second phase (Section V-C): branches trained for 15 epochs on the fixed backbone,
  "Learning rate starts at 0.1, and is reduced to 0.01 and 0.001 after 5 and 10 epochs,
  respectively"."""
  config.train.policy = 'two_phase'
  config.train.num_epochs = 15.0
  config.optim.schedule = 'step'
  config.optim.learning_rate = 0.1
  config.optim.decay_epochs = (5, 10)
  config.optim.decay_factor = 0.1
  config.optim.warmup_epochs = 0.0


def radam_recipe(config: ml_collections.ConfigDict, learning_rate: float = 0.003) -> None:
  """Table IX(b): RAdam as its official ImageNet recipe runs ResNet-18, which the paper says it
  followed. github.com/LiyuanLucasLiu/RAdam, cifar_imagenet/recipes.md at 312e3c1 (unchanged at
  d9fd30a), the two ImageNet commands:

    python imagenet.py -j 16 -a resnet18 ... --epochs 90 --schedule 31 61 --gamma 0.1
        ... --model_name radam_0003 --optimizer radam --lr 0.003 --beta1 0.9 --beta2 0.999
    (and --model_name radam_0005 ... --lr 0.005)

  with imagenet.py's defaults --train-batch 256 and --wd 1e-4: batch 256, 90 epochs, lr divided
  by 10 after epochs 31 and 61 (its adjust_learning_rate at the start of 0-based epochs 31 and
  61), betas (0.9, 0.999), decoupled weight decay 1e-4 (scaled by the learning rate, as its code
  does). The paper does not say which rate it reports: 0.003 ('radam'; 'radam_0005' for 0.005).
  (The rates 0.0003 and 0.0005 stood only in the commit before the ImageNet recipe, 3a52a60.)"""
  config.train.batch_size = 256
  config.train.num_epochs = 90.0
  config.optim.name = 'radam'
  config.optim.learning_rate = learning_rate
  config.optim.weight_decay = 1e-4
  config.optim.decay_epochs = (31, 61)
  config.optim.decay_factor = 0.1


def adahessian_recipe(config: ml_collections.ConfigDict) -> None:
  """Table IX(b): AdaHessian. Its official code (github.com/amirgholami/adahessian) has no ImageNet
  recipe; this keeps the paper's ImageNet schedule (90 epochs, /10 at 30 and 60, batch 256, weight
  decay 1e-4, decoupled as AdaHessian's code does: divided by the initial rate, so the decay per step
  is lr_t / lr_0 * wd, `optim.create_optimizer`) with the official CIFAR settings of the optimiser
  itself: lr 0.15, betas (0.9, 0.999), eps 1e-4, Hessian power 1."""
  config.optim.name = 'adahessian'
  config.optim.learning_rate = 0.15
  config.optim.eps = 1e-4
  config.optim.hessian_power = 1.0


def plain_standard_config(name: str, variant: str) -> ml_collections.ConfigDict:
  """The plain network `name` with the standard stage-5 stride and no branches: the distillation
  teachers of Table II (imagenet_r101.py sets stride 1 for its Table I column)."""
  config = get_config()
  config.model.name = name
  config.model.last_stride = 2
  config.model.branches.blocks = (0, 0, 0, 0)
  return apply_variant(config, variant)


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """ResNet-18-s1 with the Table I branches (common.get_config's fields, the ImageNet values);
  the imagenet_*.py files override `model.name` and the layout."""
  config = common.get_config()
  config.model.name = 'resnet18'  # resnet18/34/50/101/152, efficientnet_b0, ... (registry.BACKBONES).
  config.model.last_stride = 1  # Stage-5 stride: 1 = the paper's "-s1" (Tables I, II), 2 = standard.
  # The paper trained with PyTorch DataParallel on 8 GPUs, mini-batch 256: BN statistics over 32.
  config.model.bn_group_size = 32
  config.model.branches.blocks = (2, 2, 2, 2)  # S_a blocks of a_pds2..a_pds5 (Table I); 0 = no branch.
  config.model.branches.channels = (64, 128, 256, 256)  # Pooled channels per stage (Table I, VIII).
  config.model.branches.reduction = ('direct', 'direct', 'direct', 'direct')
  config.loss.betas = (1.0, 1.0, 1.0, 1.0)  # Weights of the branches of stages 2-5 (Eq. 1).
  config.data.dataset = 'imagenet2012'
  config.data.image_size = 224  # Training crop size (Section V-B).
  config.data.inception_crop = False  # True: Inception-style random-area crop instead of the paper's.
  config.train.batch_size = 256  # Section V-B.
  config.train.num_epochs = 90.0  # Section V-B.
  config.optim.learning_rate = 0.1  # Section V-B; /10 at epochs 30 and 60.
  config.optim.decay_epochs = (30, 60)
  return apply_variant(config, variant)
