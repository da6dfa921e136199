"""Plain SE-ResNeXt-101 32x4d (standard stride): the strongest knowledge-distillation teacher of
Table II (the ResNet-50 it teaches reaches 23.46 / 6.66 there). 48,955,416 parameters, as the
reference SENet code.

  python -m dsop_jax.main --config=configs/imagenet_seresnext101.py --workdir=DIR   # the teacher
  python -m dsop_jax.main --config=configs/imagenet_r50.py:s2,plain --config.distill.teacher=DIR \
      --workdir=...                                                                  # the student
  python -m dsop_jax.complexity --config=configs/imagenet_seresnext101.py
The paper reports no accuracy of its own for this network.

Training (Section V-B): the SENet paper's setting [36] with the paper's changes: "we reduced the
mini-batch size from 1024 to 256 for SE-ResNeXt-101 ... Accordingly, we reduced the initial
learning rate from 0.6 to 0.15", and "we adapted the final size of a random image crop to 256 x 256
pixels". From [36]: SGD with momentum 0.9, the rate divided by 10 every 30 epochs, 100 epochs.
Evaluation keeps the pipeline's rule at that size (shorter side 292, centre 256 x 256 crop). As a
teacher, it sees the student's 224 x 224 batch (global average pooling takes either size).
"""

import ml_collections

from dsop_jax import config_files

imagenet_base = config_files.sibling(__file__, 'imagenet_base')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = imagenet_base.plain_standard_config('seresnext101_32x4d', '')
  config.train.batch_size = 256  # "from 1024 to 256".
  config.optim.learning_rate = 0.15  # "from 0.6 to 0.15".
  config.data.image_size = 256  # "the final size of a random image crop to 256 x 256".
  config.train.num_epochs = 100.0  # [36]: 100 epochs, /10 every 30.
  config.optim.decay_epochs = (30, 60, 90)
  return imagenet_base.apply_variant(config, variant)
