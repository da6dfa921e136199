"""Shared CIFAR settings of the paper (Section V-D, Table IV): stage patterns, <=128 pooled channels
with direct DR, dropout 0.5 before each branch classifier, betas 0.1/0.2/0.3 for stages 1-3.

Each cifar_*.py file sets the backbone and its Table IV stage pattern. The dataset is the config
argument (default cifar100):
  python -m dsop_jax.complexity --config=configs/cifar_resnet110.py:cifar10
"""

import ml_collections

NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}


def get_config(dataset: str = 'cifar100') -> ml_collections.ConfigDict:
  """Pre-activation ResNet-110 with the Table IV layout; variants override the backbone fields."""
  if dataset not in NUM_CLASSES:
    raise ValueError(f'config argument (dataset) = {dataset!r} is invalid: allowed: '
                     f'{", ".join(NUM_CLASSES)}.')
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = 'preact_resnet110'  # Backbone (see dsop_jax.models.BACKBONES).
  config.model.num_classes = NUM_CLASSES[dataset]  # 10 or 100.
  config.model.last_stride = 2  # Unused by CIFAR backbones (ImageNet ResNets only).
  config.model.dtype = 'float32'  # Activation dtype: float32 or bfloat16 (covariance pooling: float32).

  config.model.branches = ml_collections.ConfigDict()
  config.model.branches.blocks = ()  # ImageNet-style one-branch-per-stage layout; () = unused.
  # Table IV stage specification, the same for every stage, one entry per backbone block: a non-zero
  # entry plugs in a branch with that many blocks after that block. '' = no branches (plain network).
  config.model.branches.pattern = '[0,0,3]x6'
  config.model.branches.channels = (128, 128, 128)  # At most 128 pooled channels (direct DR above).
  config.model.branches.pool = 'isqrt_cov'  # 'isqrt_cov' (paper) or 'gap' (Table VII ablation).
  config.model.branches.reduction = ('direct', 'direct', 'direct')  # Per stage: 'direct' or 'psdr'.
  config.model.branches.psdr_delta = 0.25  # Decay factor delta of Eq. 4 (PSDR only).
  config.model.branches.psdr_aux = True  # PSDR intermediate layers carry supervised side branches.
  config.model.branches.num_iters = 5  # Newton-Schulz iterations of iSQRT-COV.
  config.model.branches.dropout = 0.5  # Dropout between pooling and the dense layer (Section V-D).

  config.loss = ml_collections.ConfigDict()
  config.loss.alpha = 1.0  # Weight of the main first-order head (Eq. 1).
  config.loss.betas = (0.1, 0.2, 0.3)  # Weights of the branches of stages 1-3 (Section V-D).
  config.loss.label_smoothing = 0.0  # Label smoothing of every head (the paper uses none).

  config.data = ml_collections.ConfigDict()
  config.data.dataset = dataset  # TFDS name: cifar10 or cifar100.
  config.data.image_size = 32  # CIFAR images are 32x32.
  return config
