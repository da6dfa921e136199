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
command (footnote 4; timm at c2cd1a33, docs/training_hparam_examples.md: `./distributed_train.sh 2
/imagenet/ --model efficientnet_b0 -b 384 --sched step --epochs 450 --decay-epochs 2.4 --decay-rate
.97 --opt rmsproptf --opt-eps .001 -j 8 --warmup-lr 1e-6 --weight-decay 1e-5 --drop 0.2
--drop-connect 0.2 --model-ema --model-ema-decay 0.9999 --aa rand-m9-mstd0.5 --remode pixel
--reprob 0.2 --amp --lr .048`), whose other settings are used here: RMSProp as in TensorFlow (decay
0.9, momentum 0.9, epsilon 1e-3 inside the square root), weight decay 1e-5, the rate x0.97 every
2.4 epochs after a 3-epoch warm-up, 450 epochs, dropout 0.2 and stochastic depth 0.2, a weight EMA
of 0.9999 per update (`optim.ema_decay`: evaluated as the 'ema' head, exported with --ema), and
label smoothing 0.1 (train.py's `--smoothing` default, which the command keeps; the official TPU
code, tensorflow/tpu models/official/efficientnet/main.py, smooths by 0.1 too).

Decided where the paper is silent, following the code it cites:
- "Baseline ResNet preprocessing" instead of the command's RandAugment and random erasing: in
  both codes the paper cites that is a random-area crop, area (0.08, 1), aspect (3/4, 4/3), and a
  flip (tensorflow/tpu preprocessing.py `_decode_and_random_crop`; timm transforms_factory.py
  `transforms_imagenet_train` defaults), so `data.inception_crop = True`, not Section V-B's scale
  jitter of the ResNets. Not reproduced: timm's colour jitter 0.4 (brightness, contrast,
  saturation; the TPU code, whose 76.8% the paper matched "under similar settings", has none),
  and timm's exclusion of BN and bias parameters from weight decay.
- BatchNorm statistics over 96 images (`model.bn_group_size`): Section V-B's one 8-GPU server,
  768 / 8 per GPU, as the ResNets are read (32 = 256 / 8); timm's command ran 2 GPUs x 384, with
  the same global batch and rate.

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
  config.model.bn_group_size = 96  # 768 on Section V-B's 8 GPUs: BN statistics per GPU of 96.
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
  config.optim.ema_decay = 0.9999  # timm: --model-ema --model-ema-decay 0.9999.
  config.loss.label_smoothing = 0.1  # timm train.py --smoothing default; tensorflow/tpu too.
  config.data.inception_crop = True  # Both cited codes: random area (0.08, 1), aspect 3/4-4/3.
  return imagenet_base.apply_variant(config, variant)
