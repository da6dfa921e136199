"""Fine-tuning an ImageNet ResNet-50 on CUB-200-2011 (birds, 200 classes, TFDS caltech_birds2011:
5,994 training and 5,794 test images): the plain network, DSoP-Net, and the second-order network.

The recipe is the fine-tuning protocol of the official iSQRT-COV code that the paper builds on
(github.com/jiangtaoxie/fast-MPN-COV, finetune/finetune.sh, main.py, imagepreprocess.py): SGD with
momentum 0.9, batch 10, 100 epochs at a constant rate (its step schedule decays at epoch 100), the
backbone at 1.2e-3 and the classifier at 5x that (`classifier_factor=5`: here
optim.learning_rate = 6e-3 with optim.backbone_lr_scale = 0.2), weight decay 1e-3 on every
parameter; images resized to 448 on the shorter side and centre-cropped to 448, randomly flipped in
training (data.augment = 'finegrained'). ResNet-50 with its standard stride (s2), as fine-tuned
there. The DSoP branches, like the classifier, are new and learn at the classifier's rate; so does
the second-order head's reduction layer, which an ImageNet ResNet-50 does not have. The paper
itself reports no fine-tuning results: these configs have no paper number to reproduce.

The ImageNet weights come from a torchvision state dict (`python -m dsop_jax.main ...
--config.model.init_from=resnet50.safetensors`; docs/data_and_weights.md: converting torchvision's .pth), or from a
dsop_jax export or workdir of an ImageNet ResNet-50:
  DSoP-Net:  python -m dsop_jax.main --config=configs/finetune_cub.py --workdir=... \\
                 --config.data.data_dir=/data/tfds --config.model.init_from=resnet50.safetensors
  plain:     --config=configs/finetune_cub.py:plain (same flags)
  second-order (iSQRT-COV, direct DR to 256, kept at test time): --config=configs/finetune_cub.py:plain,isqrt_cov
  two-phase (Table III's policy): the branches alone, on the fine-tuned plain network of DIR:
             --config=configs/finetune_cub.py:two_phase --config.model.init_from=DIR
The other options are imagenet_base's (e.g. blocks=A-B-C-D, ch64, gap, mpn_cov, psdr=N).
CUB via TFDS: `tfds build caltech_birds2011 --data_dir=/data/tfds` on a machine with network access.
"""

import ml_collections

from dsop_jax import config_files

imagenet_r50 = config_files.sibling(__file__, 'imagenet_r50')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = imagenet_r50.get_config(','.join(filter(None, ('s2', variant))))
  config.model.num_classes = 200
  config.model.bn_group_size = 0  # Batch 10 on one GPU: BatchNorm over the whole batch.
  config.data.dataset = 'caltech_birds2011'
  config.data.image_size = 448
  config.data.augment = 'finegrained'
  config.train.batch_size = 10
  if config.train.policy != 'two_phase':  # Its own schedule: 15 epochs of branches.
    config.train.num_epochs = 100.0
    config.optim.learning_rate = 6e-3  # The classifier's: 5 x the backbone's 1.2e-3.
    config.optim.decay_epochs = ()  # Constant.
  config.optim.backbone_lr_scale = 0.2
  config.optim.weight_decay = 1e-3
  config.optim.warmup_epochs = 0.0
  config.train.checkpoint_every_steps = 600  # About one epoch.
  return config
