"""Shared ImageNet settings of the paper (Sections IV-V): ResNet-s1 DSoP-Net, Table I branch layout.

Not a paper row on its own: the imagenet_r*.py files import it and set the backbone. Complexity:
  python -m dsop_jax.complexity --config=configs/imagenet_base.py
"""

from typing import Any

import ml_collections


# Output channels of each stage (for the 'gap' variant, which pools without any reduction).
STAGE_WIDTHS = {'resnet18': (64, 128, 256, 512), 'resnet34': (64, 128, 256, 512),
                'resnet50': (256, 512, 1024, 2048), 'resnet101': (256, 512, 1024, 2048),
                'resnet152': (256, 512, 1024, 2048), 'seresnext101_32x4d': (256, 512, 1024, 2048),
                'efficientnet_b0': (16, 24, 40, 80, 112, 192, 320)}
VARIANTS = ('s2', 'plain', 'gap', 'ch64', 'ch128', 'blocks=A-B-C-D', 'early30', 'early45',
            'early60', 'two_phase', 'radam', 'adahessian', 'isqrt_cov', 'mpn_cov', 'dr=N', 'psdr=N',
            'delta=D', 'psdr_aux')
# Options that configure the second-order head, which need 'isqrt_cov' or 'mpn_cov' beside them.
_HEAD_OPTIONS = ('dr=', 'psdr=', 'delta=', 'psdr_aux')


def _number(option: str, kind: type) -> Any:
  """The value of 'key=value' as `kind`, or None when it is not one."""
  try:
    value = kind(option.partition('=')[2])
  except ValueError:
    return None
  return value if value > 0 else None


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
  - 'radam', 'adahessian': the optimisers of Table IX(b) (`radam_recipe`, `adahessian_recipe`).
  - 'isqrt_cov', 'mpn_cov': the second-order network, covariance pooling instead of GAP + FC at the
    end, kept at test time (Table II's iSQRT-COV / MPN-COV rows, Table XI); direct DR to 256
    channels unless 'dr=N' (direct DR to N) or 'psdr=N' (PSDR to N, Eq. 4) says otherwise.
    'delta=D' sets PSDR's decay factor (default 0.25); 'psdr_aux' adds its supervised side branches.
  """
  options = [o for o in variant.split(',') if o]
  for option in options:
    if option == 's2':
      config.model.last_stride = 2
    elif option == 'plain':
      config.model.branches.blocks = (0,) * len(config.model.branches.blocks)
    elif option == 'gap':
      config.model.branches.pool = 'gap'
      config.model.branches.channels = STAGE_WIDTHS[config.model.name]
    elif option in ('ch64', 'ch128'):
      config.model.branches.channels = (64, 64, 64, 64) if option == 'ch64' else (64, 128, 128, 128)
    elif option.startswith('blocks=') and all(
        b.isdigit() for b in option[len('blocks='):].split('-')) and option.count('-') == 3:
      config.model.branches.blocks = tuple(int(b) for b in option[len('blocks='):].split('-'))
    elif option in ('early30', 'early45', 'early60'):
      config.train.policy = 'early_removal'
      config.train.remove_branches_at_epoch = float(option[len('early'):])
    elif option == 'two_phase':
      two_phase_recipe(config)
    elif option == 'radam':
      radam_recipe(config)
    elif option == 'adahessian':
      adahessian_recipe(config)
    elif option in ('isqrt_cov', 'mpn_cov'):
      config.model.head.pool = option
    elif option.startswith(('dr=', 'psdr=')) and _number(option, int):
      config.model.head.reduction = 'direct' if option.startswith('dr=') else 'psdr'
      config.model.head.channels = _number(option, int)
    elif option.startswith('delta=') and _number(option, float) and _number(option, float) < 1:
      config.model.head.psdr_delta = _number(option, float)
    elif option == 'psdr_aux':
      config.model.head.psdr_aux = True
    else:
      raise ValueError(f'config argument option {option!r} is invalid: allowed: '
                       f'{", ".join(VARIANTS)}.')
  head_options = [o for o in options if o.startswith(_HEAD_OPTIONS)]
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


def radam_recipe(config: ml_collections.ConfigDict) -> None:
  """Table IX(b): RAdam as its official ImageNet recipe runs ResNet-18, which the paper says it
  followed (github.com/LiyuanLucasLiu/RAdam, cifar_imagenet/recipes.md): batch 256, 90 epochs,
  lr divided by 10 after epochs 31 and 61, betas (0.9, 0.999), decoupled weight decay 1e-4 (scaled
  by the learning rate, as its code does). The recipe lists two rates, 0.0003 and 0.0005, and the
  paper does not say which it used: 0.0003 here."""
  config.train.batch_size = 256
  config.train.num_epochs = 90.0
  config.optim.name = 'radam'
  config.optim.learning_rate = 3e-4
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
  """ResNet-18-s1 with the Table I branches; variants override `model.name` and the layout."""
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = 'resnet18'  # resnet18/34/50/101/152, efficientnet_b0, ... (models.BACKBONES).
  config.model.num_classes = 1000  # ImageNet-1k.
  config.model.last_stride = 1  # Stage-5 stride: 1 = the paper's "-s1" (Tables I, II), 2 = standard.
  config.model.dtype = 'float32'  # Activation dtype: float32 or bfloat16 (covariance pooling: float32).
  # Examples per BatchNorm statistics group in training; 0 = the whole global batch. The paper
  # trained with PyTorch DataParallel on 8 GPUs, mini-batch 256: BN statistics over 32 images.
  config.model.bn_group_size = 32
  # Backbone blocks per stage; () = the named network's own (ResNet-50: 3, 4, 6, 3). E.g. (1, 1, 1, 1)
  # keeps every width, branch and head of a config on a shallow backbone (a smoke test of a config).
  config.model.stage_sizes = ()

  config.model.branches = ml_collections.ConfigDict()
  config.model.branches.blocks = (2, 2, 2, 2)  # S_a blocks of a_pds2..a_pds5 (Table I); 0 = no branch.
  config.model.branches.pattern = ''  # Table IV stage pattern such as '[0,0,3]x6' (CIFAR); '' = unused.
  config.model.branches.channels = (64, 128, 256, 256)  # Pooled channels per stage (Table I, VIII).
  config.model.branches.pool = 'isqrt_cov'  # 'isqrt_cov' (paper) or 'gap' (Table VII ablation).
  # DR before pooling, per stage, where a stage has more channels than its target: 'direct' (one 1x1
  # conv + BN + ReLU) or 'psdr' (Eq. 4 chain with supervised side branches).
  config.model.branches.reduction = ('direct', 'direct', 'direct', 'direct')
  config.model.branches.psdr_delta = 0.25  # Decay factor delta of Eq. 4 (PSDR only).
  config.model.branches.psdr_aux = True  # PSDR intermediate layers carry supervised side branches.
  config.model.branches.num_iters = 5  # Newton-Schulz iterations of iSQRT-COV.
  config.model.branches.dropout = 0.0  # Dropout before each branch classifier.

  # The network's own head. 'gap': GAP + FC, the first-order network DSoP-Net deploys. 'isqrt_cov' or
  # 'mpn_cov': the second-order network, a reduction + covariance pooling + FC kept at test time
  # (Table II's iSQRT-COV / MPN-COV rows, Table XI; dsop_jax/gsop.py).
  config.model.head = ml_collections.ConfigDict()
  config.model.head.pool = 'gap'
  config.model.head.channels = 256  # Target channels of the reduction before pooling (Table XI).
  config.model.head.reduction = 'direct'  # 'direct' (1x1 conv + BN + ReLU) or 'psdr' (Eq. 4 chain).
  config.model.head.psdr_delta = 0.25  # Decay factor delta of Eq. 4.
  config.model.head.psdr_aux = False  # Supervised side branches on PSDR's intermediate layers.
  config.model.head.num_iters = 5  # Newton-Schulz iterations (isqrt_cov).
  config.model.head.dropout = 0.0  # Dropout before the classifier.

  config.loss = ml_collections.ConfigDict()
  config.loss.alpha = 1.0  # Weight of the main first-order head (Eq. 1).
  config.loss.betas = (1.0, 1.0, 1.0, 1.0)  # Weights of the branches of stages 2-5 (Eq. 1).
  config.loss.label_smoothing = 0.0  # Label smoothing of every head (the paper uses none).

  # Knowledge distillation (the Table II baselines), off unless a teacher is given: an export
  # directory or training workdir of a plain network; the student must have no branches.
  config.distill = ml_collections.ConfigDict()
  config.distill.teacher = ''
  config.distill.temperature = 4.0  # Hinton's T; the paper gives neither T nor the weight.
  config.distill.soft_weight = 0.5  # w: (1 - w) * CE + w * T^2 * KL.

  config.data = ml_collections.ConfigDict()
  config.data.dataset = 'imagenet2012'  # TFDS name.
  config.data.data_dir = ''  # TFDS data_dir holding the prepared dataset; '' = TFDS's default.
  config.data.image_size = 224  # Training crop size (Section V-B).
  config.data.inception_crop = False  # True: Inception-style random-area crop instead of the paper's.
  config.data.shuffle_buffer = 16384  # Examples in the shuffle buffer (on every process).
  # How processes share the training data: 'examples' (every process reads the whole split in one
  # order and decodes its slice of each global batch: the data does not depend on the number of
  # processes) or 'files' (each reads only its file shard: less I/O on many hosts).
  config.data.process_split = 'examples'

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 256  # Global batch over all devices and hosts (Section V-B).
  config.train.num_epochs = 90.0  # Section V-B.
  config.train.seed = 0  # Initialisation, data order, augmentation and dropout.
  config.train.policy = 'one_phase'  # 'one_phase', 'early_removal' or 'two_phase' (Section V-C).
  config.train.remove_branches_at_epoch = 0.0  # early_removal: epoch to detach branches (30/45/60).
  config.train.backbone_checkpoint = ''  # two_phase: export dir or workdir of the trained backbone.
  config.train.on_nonfinite = 'stop'  # A non-finite loss: 'stop' training or 'skip' the step.
  config.train.eval_every_epochs = 1.0  # Evaluation (and a metrics.jsonl line) interval.
  config.train.log_every_steps = 100  # Training-metric summaries.
  config.train.checkpoint_every_steps = 2000  # Periodic checkpoints (plus one at the end).
  config.train.keep_checkpoints = 3  # Checkpoints kept in WORKDIR/checkpoints.

  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'sgd'  # 'sgd', 'radam', 'adahessian' (Table IX) or 'rmsprop' (EfficientNet).
  config.optim.learning_rate = 0.1  # Base learning rate (Section V-B).
  config.optim.momentum = 0.9  # SGD momentum.
  config.optim.nesterov = False  # Nesterov momentum.
  config.optim.weight_decay = 1e-4  # Coupled L2 weight decay on every parameter.
  config.optim.schedule = 'step'  # 'step', 'cosine' or 'exponential'.
  config.optim.decay_epochs = (30, 60)  # Step schedule: epochs where the rate is multiplied ...
  config.optim.decay_factor = 0.1  # ... by this factor.
  config.optim.warmup_epochs = 0.0  # Linear warm-up from 0.
  # AdaHessian: added to the denominator; RMSProp: inside the square root (RAdam: 1e-8, as its code).
  config.optim.eps = 1e-4
  config.optim.hessian_power = 1.0  # AdaHessian: k in m_hat / (sqrt(v_hat)^k + eps).
  config.optim.rms_decay = 0.9  # RMSProp: decay of the squared-gradient average.
  config.optim.decay_every_epochs = 2.4  # 'exponential' schedule: epochs between decays.

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 256  # Global eval batch (the last one is padded and masked).
  return apply_variant(config, variant)
