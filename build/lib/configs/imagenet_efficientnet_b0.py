"""EfficientNet-b0 with DSoP-Net, and its plain and second-order baselines (Section V-C).

Paper (ImageNet top-1 / top-5 accuracy %; error = 100 - accuracy), single centre crop:
  plain EfficientNet-b0:                76.81 / 93.32 (error 23.19 / 6.68)
    python -m dsop_jax.main --config=configs/imagenet_efficientnet_b0.py:plain --workdir=...
  second-order pooling at the end (1280 -> 64 channels by 1x1 conv + BN + swish, iSQRT-COV,
  dropout 0.2, kept at test time):      77.02 / 93.38 (22.98 / 6.62)
    python -m dsop_jax.main --config=configs/imagenet_efficientnet_b0.py:plain,isqrt_cov --workdir=...
  DSoP-Net, first-order head deployed:  77.12 / 93.56 (22.88 / 6.44)
    python -m dsop_jax.main --config=configs/imagenet_efficientnet_b0.py --workdir=...

Branches. "One was inserted at the middle of the backbone model and the other at the end": stage 4
ends after block 8 of 16 (a_pds4, 80 channels at 14x14), and "we always insert the last auxiliary
branch B^N right before the first-order pooling layer" (Section III-A), which pools the 1280-channel
head convolution's output at 7x7: a_pds7 reads that (not stage 7's 320 channels), so the head conv
is trained by the second-order branch too. The paper gives neither their depth nor their pooled
channels; here a_pds4 has as many MBConv blocks as its stage (3) and a_pds7 one block of the head's
own 1x1 conv + BN + swish (1280 channels); each reduces to 64 channels with 1x1 conv + BN + swish,
as the second-order head does, with dropout 0.2 before its classifier.

Training. The paper's batch 768 and RMSProp learning rate 0.048 are those of timm's efficientnet_b0
recipe (footnote 4: 2 GPUs x 384, lr .048), whose other settings are used here: RMSProp as in
TensorFlow (decay 0.9, momentum 0.9, epsilon 1e-3 inside the square root), weight decay 1e-5, the
rate x0.97 every 2.4 epochs after a 3-epoch warm-up, 450 epochs, dropout 0.2 and stochastic depth
0.2, BatchNorm statistics per GPU of 384 images (`model.bn_group_size`). Not reproduced: timm's weight EMA (0.9999) and its exclusion of BN and bias parameters from
weight decay; the paper used "baseline ResNet preprocessing", which is the input pipeline here.

Complexity (python -m dsop_jax.complexity --config=configs/imagenet_efficientnet_b0.py): 5,288,548
parameters and 0.39 GFLOPs at test time, as published (5.3M, 0.39B); 11.49M / 0.53 in training.
"""

import ml_collections

from dsop_jax import config_files

imagenet_base = config_files.sibling(__file__, 'imagenet_base')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """Options are imagenet_base's: plain, isqrt_cov (with plain: the second-order baseline), ..."""
  config = imagenet_base.get_config()
  config.model.name = 'efficientnet_b0'
  config.model.last_stride = 2  # Stride of stage 6, EfficientNet's last down-sampling.
  config.model.branches.blocks = (0, 0, 0, 3, 0, 0, 1)  # a_pds4 (middle), a_pds7 (head conv).
  config.model.branches.channels = (64,) * 7
  config.model.branches.reduction = ('direct',) * 7
  config.model.branches.dropout = 0.2
  config.model.head.channels = 64  # The second-order baseline: 1280 -> 64 ...
  config.model.head.dropout = 0.2  # ... and dropout 0.2 before its classifier.
  config.loss.betas = (1.0,) * 7

  config.train.batch_size = 768
  config.model.bn_group_size = 384  # timm's recipe on 2 GPUs: BN statistics per GPU of 384.
  config.train.num_epochs = 450.0
  config.optim.name = 'rmsprop'
  config.optim.learning_rate = 0.048
  config.optim.momentum = 0.9
  config.optim.rms_decay = 0.9
  config.optim.eps = 1e-3
  config.optim.weight_decay = 1e-5
  config.optim.schedule = 'exponential'
  config.optim.decay_factor = 0.97
  config.optim.decay_every_epochs = 2.4
  config.optim.warmup_epochs = 3.0
  return imagenet_base.apply_variant(config, variant)
