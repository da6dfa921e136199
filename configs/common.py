"""The config schema every dsop_jax config shares, and the one grammar of config arguments.

`get_config()` holds every field with its default and meaning, the one source of defaults: a saved
config is brought up to it by `dsop_jax.config_files.upgrade`, so a field's default must be what a
run did before the field existed. The family bases override only what differs: `imagenet_base.py`
(the paper's Sections IV-V on ImageNet) and `cifar_base.py` (Section V-D, Table IV).

Config arguments (`--config=configs/NAME.py:ARGUMENT`) are comma-separated options, each a name
('plain') or a 'key=value' ('blocks=2-2-0-0'); `apply_options` applies them in order through the
options a config allows and refuses anything else, naming what is allowed.
"""

from typing import Callable, Dict, Optional

import ml_collections

# An option's handler gets the config and the text after '=' ('' for a bare name); returning False
# says the value is not allowed.
Handler = Callable[[ml_collections.ConfigDict, str], Optional[bool]]


def apply_options(config: ml_collections.ConfigDict, argument: str,
                  options: Dict[str, Handler]) -> ml_collections.ConfigDict:
  """Applies the comma-separated options of `argument` in order. `options` maps names ('plain')
  and 'key=VALUE' forms ('blocks=A-B-C-D', matched on 'blocks=') to their handlers.

  Raises:
    ValueError: an option that is not allowed, or whose handler refuses its value, naming it and
      every allowed option.
  """
  names = {k: h for k, h in options.items() if '=' not in k}
  keyed = {k.partition('=')[0]: h for k, h in options.items() if '=' in k}
  for option in (o for o in argument.split(',') if o):
    key, equals, value = option.partition('=')
    handler = keyed.get(key) if equals else names.get(option)
    if handler is None or handler(config, value) is False:
      allowed = f'allowed: {", ".join(options)}' if options else 'this config takes no options'
      raise ValueError(f'config argument option {option!r} is invalid: {allowed}.')
  return config


def get_config() -> ml_collections.ConfigDict:
  """Every field of a dsop_jax config with its default (a family base overrides what differs)."""
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = 'resnet18'  # Backbone: a key of dsop_jax.models.registry.BACKBONES.
  config.model.num_classes = 1000  # Outputs of every classifier; must match the dataset's classes.
  config.model.dtype = 'float32'  # Activation dtype: float32 or bfloat16 (covariance pooling: float32).
  # Examples per BatchNorm statistics group in training; 0 = the whole global batch.
  config.model.bn_group_size = 0
  # Backbone blocks per stage; () = the named network's own (ResNet-50: 3, 4, 6, 3). E.g. (1, 1, 1, 1)
  # keeps every width, branch and head of a config on a shallow backbone (a smoke test of a config).
  config.model.stage_sizes = ()
  # Stride of the last down-sampling stage of the ImageNet networks: 1 = the paper's "-s1" (Tables
  # I, II), 2 = the standard network (the CIFAR networks have no such stage and ignore it).
  config.model.last_stride = 2
  # Weights the backbone starts from ('' = random): a safetensors file of a torchvision ResNet-18/
  # 34/50/101/152 or timm seresnext101_32x4d / efficientnet_b0 state dict, or a dsop_jax export
  # directory or training workdir. Branches start fresh; so does the classifier when the source's
  # has another class count. Nothing is unpickled (docs/data_and_weights.md: converting a .pth).
  config.model.init_from = ''

  # The detachable branches. Two layouts, one of them set (neither: the plain network):
  config.model.branches = ml_collections.ConfigDict()
  config.model.branches.blocks = ()  # S_a blocks of one branch after each stage (Table I); 0 = none.
  config.model.branches.pattern = ''  # Table IV stage specification, e.g. '[0,0,3]x6' (CIFAR).
  config.model.branches.channels = ()  # Pooled channels per stage (Tables I, VIII); DR above them.
  config.model.branches.pool = 'isqrt_cov'  # 'isqrt_cov' (paper) or 'gap' (Table VII ablation).
  # DR before pooling, per stage, where a stage has more channels than its target: 'direct' (one 1x1
  # conv + BN + ReLU) or 'psdr' (Eq. 4 chain with supervised side branches).
  config.model.branches.reduction = ()
  config.model.branches.psdr_delta = 0.25  # Decay factor delta of Eq. 4 (PSDR only).
  config.model.branches.psdr_aux = True  # PSDR intermediate layers carry supervised side branches.
  config.model.branches.num_iters = 5  # Newton-Schulz iterations of iSQRT-COV.
  config.model.branches.dropout = 0.0  # Dropout before each branch classifier.

  # The network's own head. 'gap': GAP + FC, the first-order network DSoP-Net deploys. 'isqrt_cov' or
  # 'mpn_cov' (ImageNet networks): the second-order network, a reduction + covariance pooling + FC
  # kept at test time (Table II's iSQRT-COV / MPN-COV rows, Table XI; dsop_jax/models/gsop.py).
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
  config.loss.betas = ()  # Weights of the branches of each stage (Eq. 1), one per stage.
  config.loss.label_smoothing = 0.0  # Label smoothing of every head (the paper uses none).
  # Mixup / CutMix of each training batch on the device, lam ~ Beta(alpha, alpha), every head scored
  # against both label sets (losses.mix_batch); 0 = off (the paper uses neither). Both > 0: one or
  # the other per batch, with equal probability.
  config.loss.mixup_alpha = 0.0
  config.loss.cutmix_alpha = 0.0

  # Knowledge distillation (the Table II baselines), off unless a teacher is given: an export
  # directory or training workdir of a plain network; the student must have no branches.
  config.distill = ml_collections.ConfigDict()
  config.distill.teacher = ''
  config.distill.temperature = 4.0  # Hinton's T; the paper gives neither T nor the weight.
  config.distill.soft_weight = 0.5  # w: (1 - w) * CE + w * T^2 * KL.

  config.data = ml_collections.ConfigDict()
  # 'imagenet2012', 'cifar10', 'cifar100', 'digits' (shipped with scikit-learn), 'fashion_mnist' (its
  # IDX files), 'folder' (an ImageFolder tree at data_dir: data_dir/train/<class>/*.jpg|png and
  # data_dir/val/<class>/...), or the name of any TFDS image-classification dataset (e.g.
  # caltech_birds2011): its image and label features and class count come from TFDS.
  config.data.dataset = 'imagenet2012'
  config.data.train_split = ''  # Split names; '' = the dataset's own (folder: 'train' and 'val';
  config.data.eval_split = ''  # a TFDS name: 'train' and the first of validation/test it has).
  # 'imagenet' (scale jitter / Inception crop), 'cifar' (pad-crop-flip) or 'small' (pad-crop, no
  # flip: small grey images); '' = the dataset's own ('imagenet' for folders and TFDS names).
  config.data.augment = ''
  # Per-channel normalisation (RGB, pixels in [0, 255]); () = the dataset's own: its published
  # statistics, computed from a folder's images on first use, ImageNet's for a TFDS name.
  config.data.mean = ()
  config.data.std = ()
  # TFDS data_dir holding the prepared dataset ('' = TFDS's default); for fashion_mnist, the
  # directory of its four IDX files (gzipped or not).
  config.data.data_dir = ''
  # Examples of the training split to keep ('digits' and 'fashion_mnist' only): a random subset
  # fixed by train_subset_seed, the same for every config.train.seed; 0 = the whole split.
  config.data.train_subset = 0
  config.data.train_subset_seed = 0  # Which subset: the seed of the permutation that draws it.
  config.data.fit = 'pad'  # fashion_mnist's 28x28 images to image_size: 'pad' (zeros) or 'resize'.
  config.data.image_size = 224  # Training crop size.
  # ImageNet-style augmentation: True = the Inception random-area crop (8%-100% of the area, aspect
  # 3/4-4/3), False = the paper's random shorter side in [256, 512] and a random crop.
  config.data.inception_crop = False
  config.data.shuffle_buffer = 16384  # Examples in the shuffle buffer (on every process).
  # How processes share the training data: 'examples' (every process reads the whole split in one
  # order and decodes its slice of each global batch: the data does not depend on the number of
  # processes) or 'files' (each reads only its file shard: less I/O on many hosts).
  config.data.process_split = 'examples'

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 256  # Global batch over all devices and hosts.
  config.train.num_epochs = 90.0
  config.train.seed = 0  # Initialisation, data order, augmentation and dropout.
  config.train.policy = 'one_phase'  # 'one_phase', 'early_removal' or 'two_phase' (Section V-C).
  config.train.remove_branches_at_epoch = 0.0  # early_removal: epoch to detach branches (30/45/60).
  config.train.backbone_checkpoint = ''  # two_phase: export dir or workdir of the trained backbone.
  config.train.on_nonfinite = 'stop'  # A rejected (non-finite) step: 'stop' training or 'skip' it.
  config.train.max_consecutive_skips = 20  # 'skip' gives up after more rejected steps in a row.
  config.train.eval_every_epochs = 1.0  # Evaluation (and a metrics.jsonl line) interval.
  config.train.log_every_steps = 100  # Training-metric summaries.
  config.train.tensorboard = True  # TensorBoard event files in WORKDIR (False: the log alone).
  config.train.checkpoint_every_steps = 2000  # Periodic checkpoints (plus one at the end).
  config.train.checkpoint_every_epoch = False  # Also a checkpoint at the end of every epoch.
  config.train.keep_checkpoints = 3  # Checkpoints kept in WORKDIR/checkpoints.
  # Also save a checkpoint at every evaluation and keep the one with the best main-head top-1
  # beside the last keep_checkpoints (export/eval it with --best).
  config.train.keep_best = False
  # Checkpoint files written in the background while training goes on (the state is copied to host
  # memory and checksummed first); a save cut short is never restored, as with blocking saves.
  config.train.async_checkpointing = False
  # Training steps whose gradients are averaged into one optimiser update (1 = none): the batch per
  # update is accumulate_steps * batch_size, while BatchNorm sees batches of batch_size.
  config.train.accumulate_steps = 1
  # (first, last): a jax.profiler trace of steps first..last-1 in WORKDIR/profile (TensorBoard's
  # profile plugin, Perfetto); () = none.
  config.train.profile_steps = ()
  # Fields a resume may change although they change what the steps see or the schedule
  # (comma-separated, e.g. 'train.batch_size,data.fit'; see runs.continuity_fields).
  config.train.allow_resume_changes = ''

  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'sgd'  # 'sgd', 'radam', 'adahessian' (Table IX) or 'rmsprop' (EfficientNet).
  config.optim.learning_rate = 0.1  # Base learning rate.
  config.optim.momentum = 0.9  # SGD momentum.
  config.optim.nesterov = False  # Nesterov momentum.
  config.optim.weight_decay = 1e-4  # Coupled L2 weight decay on every parameter (SGD, RMSProp).
  config.optim.schedule = 'step'  # 'step', 'cosine' or 'exponential'.
  config.optim.decay_epochs = (30, 60)  # Step schedule: epochs where the rate is multiplied ...
  config.optim.decay_factor = 0.1  # ... by this factor.
  config.optim.warmup_epochs = 0.0  # Linear warm-up from 0.
  # Exponential moving average of the parameters and BN statistics, moved by 1 - ema_decay each
  # step (e.g. 0.9998), evaluated as the 'ema' head and exportable (--ema); 0 = none.
  config.optim.ema_decay = 0.0
  config.optim.clip_grad_norm = 0.0  # Clip the gradient's global norm to this (0 = no clipping).
  # The backbone's learning rate (its classifier and second-order head excluded) as a fraction of
  # the branches' and classifier's: fine-tuning from model.init_from uses e.g. 0.1; 1 = one rate.
  config.optim.backbone_lr_scale = 1.0
  # Linear scaling rule: learning_rate * (batch per update) / lr_reference_batch (0 = unscaled).
  config.optim.lr_reference_batch = 0
  # AdaHessian: added to the denominator; RMSProp: inside the square root (RAdam: 1e-8, as its code).
  config.optim.eps = 1e-4
  config.optim.hessian_power = 1.0  # AdaHessian: k in m_hat / (sqrt(v_hat)^k + eps).
  config.optim.rms_decay = 0.9  # RMSProp: decay of the squared-gradient average.
  config.optim.decay_every_epochs = 2.4  # 'exponential' schedule: epochs between decays.

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 256  # Global eval batch (the last one is padded and masked).
  return config
