"""Input pipelines (tf.data): a dataset's records (`datasets.records`) as training and evaluation
batches, and the preprocessing recipe an export records.

TensorFlow is used for input only and never sees a GPU. One code path serves every dataset: raw
records -> seeded shuffle -> (enumerate, skip to the resume position) -> this process's slice of
every global batch (with data.process_split='files', each process reads its own file shard instead)
-> per-example preprocessing with stateless random ops seeded by (seed, epoch, index) -> batches.
So the data order and augmentation are a pure function of (seed, step): a run resumed at step k sees
exactly the batches an uninterrupted run sees from step k on.

Augmentation (config.data.augment, else the dataset's own; Section V-B): 'imagenet', shorter side
resized to a random size in [256, 512] (for 224 crops; scaled with the crop size), random crop,
random flip (or an Inception crop with config.data.inception_crop); eval, shorter side 256/224 of
the crop and a centre crop: ImageNet, image folders and TFDS datasets by name. 'finegrained',
the fine-grained protocol of the official iSQRT-COV code (fast-MPN-COV's CUB transforms): shorter
side resized to the crop size, centre crop, random flip; eval the same without the flip. 'cifar', 4-pixel
zero padding, random crop, random flip; eval on the image itself: CIFAR-10/100, Fashion-MNIST
(fitted to config.data.image_size by zero padding or resizing, config.data.fit). 'small', a
2-pixel pad and random crop without flips: the digits (not mirror-symmetric). Images of another
size than config.data.image_size are resized to it first for 'cifar' and 'small'. Then
normalisation by the dataset's per-channel mean and std (config.data.mean/std when given).
"""

import math
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import ml_collections
import numpy as np
import tensorflow as tf

from dsop_jax.data import datasets
from dsop_jax.data import image_files

tf.config.set_visible_devices([], 'GPU')  # Input pipeline only: never take accelerator memory.

PROCESS_SPLITS = ('examples', 'files')  # config.data.process_split, see train_batches.


def validate_data_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of `config.data` (of a valid config.model),
  an unprepared TFDS dataset or a malformed image folder included, before anything reads the
  data."""
  d = config.data
  if d.process_split not in PROCESS_SPLITS:
    raise ValueError(f'config.data.process_split = {d.process_split!r} is invalid: allowed: '
                     f'{", ".join(PROCESS_SPLITS)}.')
  if not isinstance(d.shuffle_buffer, int) or d.shuffle_buffer < 1:
    raise ValueError(f'config.data.shuffle_buffer = {d.shuffle_buffer!r} is invalid: must be an '
                     'integer >= 1.')
  if not isinstance(d.image_size, int) or d.image_size < 32:
    raise ValueError(f'config.data.image_size = {d.image_size!r} is invalid: must be an integer '
                     '>= 32.')
  if not isinstance(d.inception_crop, bool):
    raise ValueError(f'config.data.inception_crop = {d.inception_crop!r} is invalid: allowed: '
                     'True, False.')
  if d.fit not in datasets.FITS:
    raise ValueError(f'config.data.fit = {d.fit!r} is invalid: allowed: {", ".join(datasets.FITS)}.')
  if d.augment not in ('',) + datasets.AUGMENTATIONS:
    raise ValueError(f'config.data.augment = {d.augment!r} is invalid: allowed: '
                     f'{", ".join(datasets.AUGMENTATIONS)}, or \'\' for the dataset\'s own.')
  mean, std = tuple(d.mean), tuple(d.std)
  if (mean or std) and (len(mean) != 3 or len(std) != 3 or not all(
      isinstance(v, (int, float)) for v in mean + std) or min(std) <= 0):
    raise ValueError(f'config.data.mean = {mean!r}, config.data.std = {std!r} are invalid: give '
                     'three numbers each (RGB, pixels in [0, 255]; std > 0), or () for the '
                     "dataset's own.")
  datasets.validate_source(config)


def with_dataset_stats(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with config.data.mean and std filled in where the dataset's are computed from its
  images (an image folder), so the run's config.json records what it was normalised with."""
  if config.data.dataset != datasets.FOLDER or config.data.mean:
    return config
  info = datasets.dataset_info(config)
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.mean, config.data.std = tuple(info.mean), tuple(info.std)
  return config


def _pad_crop_flip(image: tf.Tensor, seed: tf.Tensor, pad: int, flip: bool) -> tf.Tensor:
  size = image.shape[0]
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  image = tf.image.stateless_random_crop(image, (size, size, 3), seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(image, flip_seed) if flip else image


def _resize_shorter(image: tf.Tensor, shorter: tf.Tensor) -> tf.Tensor:
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.cast(shorter, tf.float32) / tf.reduce_min(shape)
  new = tf.cast(tf.math.ceil(shape * scale), tf.int32)
  return tf.image.resize(image, new, method='bilinear', antialias=True)


def _shorter_side_scale(shape: tf.Tensor, shorter: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """(resized height and width, int32; per-axis scale, float32) of `_resize_shorter`."""
  shape = tf.cast(shape[:2], tf.float32)
  new = tf.cast(tf.math.ceil(shape * (tf.cast(shorter, tf.float32) / tf.reduce_min(shape))),
                tf.int32)
  return new, tf.cast(new, tf.float32) / shape


def _crop_of_resized_jpeg(jpeg: tf.Tensor, shorter: tf.Tensor, offset: tf.Tensor, size: int
                          ) -> tf.Tensor:
  """The `size` x `size` crop at `offset` (top, left) of the JPEG resized to a shorter side of
  `shorter` (`_resize_shorter`), decoding only the window of the source that the crop's pixels
  are interpolated from: the crop's span mapped back through the scale, widened by the
  antialiasing kernel's reach (max(1, 1/scale) source pixels) and one pixel more, clamped to the
  image. The window is resampled with the scale and translation the whole-image resize uses, so a
  crop pixel sees the same source pixels with the same weights (float32 rounding aside)."""
  shape = tf.io.extract_jpeg_shape(jpeg)
  _, scale = _shorter_side_scale(shape, shorter)
  reach = tf.math.ceil(tf.maximum(1.0, 1.0 / scale)) + 1.0
  start = tf.cast(offset, tf.float32)
  first = tf.maximum(tf.floor((start + 0.5) / scale - 0.5 - reach), 0.0)
  last = tf.minimum(tf.math.ceil((start + size - 0.5) / scale - 0.5 + reach),
                    tf.cast(shape[:2], tf.float32) - 1.0)
  first, extent = tf.cast(first, tf.int32), tf.cast(last - first, tf.int32) + 1
  window = tf.io.decode_and_crop_jpeg(jpeg, tf.concat([first, extent], 0), channels=3,
                                     dct_method=image_files.JPEG_DCT)
  return tf.raw_ops.ScaleAndTranslate(
      images=tf.cast(window, tf.float32)[None], size=tf.constant([size, size]), scale=scale,
      translation=tf.cast(first, tf.float32) * scale - start, kernel_type='triangle',
      antialias=True)[0]


def _random_crop_offset(resized: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """The (top, left) `tf.image.stateless_random_crop(image, (size, size, 3), seed)` takes from an
  image of height and width `resized`: the same draw, made without the image."""
  limit = tf.concat([resized - size + 1, [1]], 0)
  offset = tf.random.stateless_uniform([3], seed, maxval=tf.int32.max, dtype=tf.int32) % limit
  return offset[:2]


def _imagenet_train(image: tf.Tensor, seed: tf.Tensor, size: int, inception: bool) -> tf.Tensor:
  """`image`: JPEG bytes (ImageNet: only the crop window is decoded) or a decoded H x W x 3."""
  encoded = image.dtype == tf.string
  crop_seed, flip_seed, scale_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  if inception:  # Random area 8%-100%, aspect ratio 3/4-4/3, resized to size x size.
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.io.extract_jpeg_shape(image) if encoded else tf.shape(image), tf.zeros((1, 0, 4)),
        seed=crop_seed, area_range=(0.08, 1.0), aspect_ratio_range=(0.75, 4 / 3),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    if encoded:
      image = tf.io.decode_and_crop_jpeg(image, tf.stack([begin[0], begin[1], crop[0], crop[1]]),
                                         channels=3, dct_method=image_files.JPEG_DCT)
    else:
      image = tf.slice(image, begin, crop)
    image = tf.image.resize(image, (size, size), method='bilinear', antialias=True)
  else:  # Paper: shorter side random in [256, 512] (for 224 crops), random crop.
    low, high = round(size * 256 / 224), round(size * 512 / 224)
    shorter = tf.random.stateless_uniform((), scale_seed, low, high + 1, dtype=tf.int32)
    if encoded:  # Only the window the crop comes from is decoded.
      resized, _ = _shorter_side_scale(tf.io.extract_jpeg_shape(image), shorter)
      image = _crop_of_resized_jpeg(image, shorter, _random_crop_offset(resized, size, crop_seed),
                                    size)
    else:
      image = _resize_shorter(image, shorter)
      image = tf.image.stateless_random_crop(image, (size, size, 3), seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def eval_shorter_side(augment: str, size: int) -> int:
  """The shorter side images are resized to before the centre crop of `size`: 256/224 of it for
  'imagenet' (ImageNet's 256 -> 224), the crop itself for 'finegrained' (448 -> 448)."""
  return size if augment == 'finegrained' else round(size * 256 / 224)


def _imagenet_eval(image: tf.Tensor, size: int, shorter: int) -> tf.Tensor:
  if image.dtype == tf.string:  # JPEG bytes: only the centre crop's window is decoded.
    resized, _ = _shorter_side_scale(tf.io.extract_jpeg_shape(image), shorter)
    return _crop_of_resized_jpeg(image, shorter, (resized - size) // 2, size)
  image = _resize_shorter(image, shorter)
  shape = tf.shape(image)
  top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
  return image[top:top + size, left:left + size]


def preprocess(example: Dict[str, tf.Tensor], seed: tf.Tensor, *, info: datasets.DatasetInfo,
               train: bool, image_size: int, inception_crop: bool = False
               ) -> Dict[str, tf.Tensor]:
  """One example -> {'image': HxWx3 uint8, 'label': int32}: pixels (resized ones rounded), in
  training and evaluation, which cross to the device at a quarter of float32's size and are
  normalised there (`steps.normalise_images`) with the dataset's mean and std."""
  image = example['image']
  if image.shape.rank == 3 and image.shape[-1] == 1:  # Grey (Fashion-MNIST): the networks take 3 channels.
    image = tf.tile(image, (1, 1, 3))
  if info.augment == 'imagenet' and train:
    image = _imagenet_train(image, seed, image_size, inception_crop)
  elif info.augment in ('imagenet', 'finegrained'):  # The fine-grained train crop flips.
    image = _imagenet_eval(image, image_size, eval_shorter_side(info.augment, image_size))
    if train:
      image = tf.image.stateless_random_flip_left_right(image, seed)
  else:
    if tuple(image.shape[:2]) != (image_size, image_size):  # Another size, or sizes that vary.
      image = tf.image.resize(image, (image_size, image_size), method='bilinear', antialias=True)
    if train:
      image = _pad_crop_flip(image, seed, pad=4 if info.augment == 'cifar' else 2,
                             flip=info.augment == 'cifar')
  if image.dtype != tf.uint8:  # Resized pixels rounded: uint8 crosses to the device.
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
  image = tf.ensure_shape(image, (image_size, image_size, 3))
  return {'image': image, 'label': tf.cast(example['label'], tf.int32)}




def preprocessing(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """How an image must be prepared for the trained network, as the evaluation prepares it: a JSON
  object that `prepare_image` (and anyone without dsop_jax) follows."""
  info, size = datasets.dataset_info(config), config.data.image_size
  recipe: Dict[str, Any] = {
      'input_size': [size, size], 'layout': 'NHWC', 'channel_order': 'RGB', 'dtype': 'float32',
      'value_range': [0, 255], 'mean': list(info.mean), 'std': list(info.std),
      'normalise': '(pixel - mean) / std per channel, pixels in [0, 255]'}
  if info.augment in ('imagenet', 'finegrained'):
    recipe['resize'] = {'rule': 'shorter_side_then_center_crop',
                        'shorter_side': eval_shorter_side(info.augment, size), 'crop': [size, size],
                        'method': 'bilinear, antialiased'}
  elif config.data.dataset == 'fashion_mnist':
    fit = config.data.fit
    recipe['grey'] = True
    recipe['resize'] = {'rule': 'grey_28_then_' + fit, 'source_size': [28, 28],
                        'method': 'bilinear, antialiased'}
  else:
    recipe['grey'] = config.data.dataset == 'digits'
    recipe['resize'] = {'rule': 'resize', 'method': 'bilinear, antialiased'}
  if recipe.get('grey'):
    recipe['channels'] = 'one grey channel repeated three times'
  return recipe


def prepare_image(image: np.ndarray, recipe: Mapping[str, Any]) -> np.ndarray:
  """An H x W x 3 uint8 RGB image -> the network's float32 input, following `recipe`
  (`preprocessing`), with the evaluation pipeline's operations."""
  size = recipe['input_size'][0]
  resize = recipe['resize']
  if recipe.get('grey'):  # ITU-R 601 luma, which leaves a grey image's value as it is.
    image = np.round(np.asarray(image, np.float64) @ np.array([0.299, 0.587, 0.114]))
    image = np.clip(image, 0, 255).astype(np.uint8)[..., None]
  x = tf.convert_to_tensor(image, tf.uint8)
  if resize['rule'] == 'shorter_side_then_center_crop':
    x = _resize_shorter(x, resize['shorter_side'])
    shape = tf.shape(x)
    top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
    x = x[top:top + size, left:left + size]
  elif resize['rule'].startswith('grey_28_then_'):
    source = tf.image.resize(x, resize['source_size'], method='bilinear', antialias=True)
    grey = np.clip(np.round(source.numpy()[..., 0]), 0, 255).astype(np.uint8)
    x = tf.convert_to_tensor(datasets.fit_grey(grey[None], size, resize['rule'].rsplit('_', 1)[1])[0][..., None])
  elif tuple(x.shape[:2]) != (size, size):
    x = tf.image.resize(x, (size, size), method='bilinear', antialias=True)
  x = tf.round(tf.cast(x, tf.float32))  # Resized pixels rounded, as the evaluation sends them.
  if x.shape[-1] == 1:
    x = tf.tile(x, (1, 1, 3))
  x = (x - tf.constant(recipe['mean'], tf.float32)) / tf.constant(recipe['std'], tf.float32)
  return x.numpy()


def steps_per_epoch(config: ml_collections.ConfigDict, global_batch_size: int) -> int:
  """Training steps per epoch: every process drops the same remainder."""
  return datasets.num_examples(config, datasets.dataset_info(config).train_split) // global_batch_size


def _slice_of_global_batch(global_batch: int, local_batch: int, process_index: int
                           ) -> Any:
  """Predicate on (global index, example): the example is in this process's slice of its batch."""

  def mine(index: tf.Tensor, example: Any) -> tf.Tensor:
    del example
    return (index % global_batch) // local_batch == process_index

  return mine


def train_batches(config: ml_collections.ConfigDict, *, local_batch_size: int, start_step: int,
                  seed: int, process_index: int = 0, process_count: int = 1,
                  skipped: Optional[datasets.SkipCounter] = None) -> Iterator[Dict[str, np.ndarray]]:
  """Endless training batches of this process, starting at global step `start_step`: uint8 images
(normalise them with `steps.normalise_images` and `datasets.dataset_info(config)`'s mean and std,
as the train step does on the device) and int32 labels.

  With config.data.process_split = 'examples' every process reads the whole split in the same
  shuffled order and takes its slice of each global batch, so the global batches (and their
  augmentation, seeded by the global example index) do not depend on the number of processes: a
  run on 2 hosts sees exactly the data of a run on 1. Each process decodes only its own images.
  With 'files' each process reads only its shard of the files (`tfds.split_for_jax_process`), which
  saves storage bandwidth on many hosts, but the data order then depends on the process count.

  Unreadable records are skipped and counted in `skipped`; an epoch is then topped up from its own
  start, so every epoch still has its `steps_per_epoch` batches and positions stay a function of
  (seed, step).
  """
  info = datasets.dataset_info(config)
  global_batch = local_batch_size * process_count
  per_epoch = steps_per_epoch(config, global_batch)
  if per_epoch < 1:
    raise ValueError(f'config.train.batch_size = {global_batch} is larger '
                     f'than the training split of {config.data.dataset!r}.')
  by_example = config.data.process_split == 'examples'
  epoch, offset = divmod(start_step, per_epoch)
  while True:
    epoch_seed = seed * 1_000_003 + epoch
    ds, count = datasets.records(config, info.train_split, process_index=process_index,
                         process_count=process_count, train=True, file_seed=epoch_seed,
                         skipped=skipped)
    ds = ds.shuffle(min(count, config.data.shuffle_buffer), seed=epoch_seed,
                    reshuffle_each_iteration=False).repeat()  # Tops up after skipped records.
    if by_example:  # Global index i; this process keeps its slice of every global batch.
      ds = ds.enumerate().skip(offset * global_batch).filter(
          _slice_of_global_batch(global_batch, local_batch_size, process_index))
    else:  # Local index i, made unique over processes.
      ds = ds.enumerate(start=process_index * 2**40).skip(offset * local_batch_size)
    ds = ds.map(lambda i, ex: preprocess(
        ex, tf.stack([tf.constant(epoch_seed, tf.int64), i]), info=info, train=True,
        image_size=config.data.image_size, inception_crop=config.data.inception_crop),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch_size, drop_remainder=True).take(per_epoch - offset)
    produced = 0
    for batch in ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
      produced += 1
      yield batch
    if not produced:
      raise ValueError(f'config.data.dataset = {config.data.dataset!r}: no readable training '
                       f'record in epoch {epoch} (skipped as unreadable: '
                       f'{skipped.value if skipped else "not counted"}).')
    epoch, offset = epoch + 1, 0


def eval_steps(config: ml_collections.ConfigDict, global_batch_size: int,
               process_count: int = 1) -> int:
  """Eval batches every process yields (the same number on all of them)."""
  total = datasets.num_examples(config, datasets.dataset_info(config).eval_split)
  if config.data.process_split == 'examples':
    return math.ceil(total / global_batch_size)
  return math.ceil(math.ceil(total / process_count) / (global_batch_size // process_count))


def eval_batches(config: ml_collections.ConfigDict, *, local_batch_size: int, process_index: int = 0,
                 process_count: int = 1, skipped: Optional[datasets.SkipCounter] = None
                 ) -> Iterator[Dict[str, np.ndarray]]:
  """Every eval example once, in batches padded to full size; 'mask' marks real examples. Images
  are uint8: normalise them with `steps.normalise_images` (`steps.evaluate` does, given the
  dataset's mean and std).

  Every process yields the same number of batches (`eval_steps`), all-padding ones included, so the
  collective eval step runs in lockstep on all hosts. With config.data.process_split = 'examples'
  each process takes its slice of every global batch, as in training, so the sums are grouped the
  same way whatever the number of processes. Unreadable records are skipped (counted in `skipped`):
  the metrics are then over the readable images.
  """
  info = datasets.dataset_info(config)
  ds, _ = datasets.records(config, info.eval_split, process_index=process_index,
                   process_count=process_count, train=False, file_seed=0, skipped=skipped)
  if config.data.process_split == 'examples':
    global_batch = local_batch_size * process_count
    ds = ds.enumerate().filter(
        _slice_of_global_batch(global_batch, local_batch_size, process_index)).map(
            lambda i, ex: ex)
  ds = ds.map(lambda ex: preprocess(ex, tf.zeros(2, tf.int64), info=info, train=False,
                                    image_size=config.data.image_size),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch_size).prefetch(tf.data.AUTOTUNE)
  steps = eval_steps(config, local_batch_size * process_count, process_count)
  produced = 0
  for batch in ds.as_numpy_iterator():
    yield _pad(batch, local_batch_size)
    produced += 1
  size = config.data.image_size
  empty = {'image': np.zeros((0, size, size, 3), np.uint8), 'label': np.zeros((0,), np.int32)}
  for _ in range(steps - produced):
    yield _pad(empty, local_batch_size)


def _pad(batch: Dict[str, Any], size: int) -> Dict[str, np.ndarray]:
  n = len(batch['label'])
  pad = lambda a: np.concatenate([a, np.zeros((size - n,) + a.shape[1:], a.dtype)])  # noqa: E731
  return {'image': pad(batch['image']), 'label': pad(batch['label']),
          'mask': np.arange(size) < n}
