"""Shared ImageNet settings of the paper (Sections IV-V): ResNet-s1 DSoP-Net, Table I branch layout.

Not a paper row on its own: the imagenet_r*.py files import it and set the backbone. Complexity:
  python -m dsop_jax.complexity --config=configs/imagenet_base.py
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """ResNet-18-s1 with the Table I branches; variants override `model.name` and the layout."""
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = 'resnet18'  # Backbone: resnet18/34/50/101/152 (see dsop_jax.models.BACKBONES).
  config.model.num_classes = 1000  # ImageNet-1k.
  config.model.last_stride = 1  # Stage-5 stride: 1 = the paper's "-s1" (Tables I, II), 2 = standard.
  config.model.dtype = 'float32'  # Activation dtype: float32 or bfloat16 (covariance pooling: float32).

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

  config.loss = ml_collections.ConfigDict()
  config.loss.alpha = 1.0  # Weight of the main first-order head (Eq. 1).
  config.loss.betas = (1.0, 1.0, 1.0, 1.0)  # Weights of the branches of stages 2-5 (Eq. 1).
  config.loss.label_smoothing = 0.0  # Label smoothing of every head (the paper uses none).

  config.data = ml_collections.ConfigDict()
  config.data.dataset = 'imagenet2012'  # TFDS name.
  config.data.image_size = 224  # Training crop size (Section V-B).
  return config
