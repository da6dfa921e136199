"""Input pipelines (tf.data) for ImageNet, CIFAR-10/100, Fashion-MNIST and the embedded digits.

TensorFlow is used for input only and never sees a GPU. One code path serves every dataset: raw
records -> seeded shuffle -> (enumerate, skip to the resume position) -> this process's slice of
every global batch (with data.process_split='files', each process reads its own file shard instead)
-> per-example preprocessing with stateless random ops seeded by (seed, epoch, index) -> batches.
So the data order and augmentation are a pure function of (seed, step): a run resumed at step k sees
exactly the batches an uninterrupted run sees from step k on. ImageNet JPEGs and CIFAR PNGs are read
as bytes and checked before decoding: an incomplete file is skipped and counted instead of stopping
the run.

Augmentation (Section V-B): ImageNet, shorter side resized to a random size in [256, 512], random
224x224 crop, random flip, mean/std normalisation (or an Inception crop); eval, shorter side 256 and a
centre crop. CIFAR, 4-pixel zero padding, random 32x32 crop, random flip; eval on the original images.
Digits (1,797 8x8 images shipped inside scikit-learn, upscaled to 32x32, fixed 1437/360 split), a
2-pixel pad and random crop without flips (digits are not mirror-symmetric). Fashion-MNIST (60,000
training and 10,000 test 28x28 grey images, read from the four IDX files its authors publish), fitted
to config.data.image_size by zero padding or resizing (config.data.fit), then CIFAR's pad-crop-flip.
The two are held in memory, so config.data.train_subset can keep a fixed random subset of their
training split for runs sized to a CPU.
"""

import dataclasses
import functools
import gzip
import math
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

tf.config.set_visible_devices([], 'GPU')  # Input pipeline only: never take accelerator memory.

_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Per-channel mean and standard deviation of each CIFAR training set, in [0, 255]: CIFAR-10's, and
# CIFAR-100's own, the values public CIFAR-100 training code normalises with.
_CIFAR10_MEAN = (0.4914 * 255, 0.4822 * 255, 0.4465 * 255)
_CIFAR10_STD = (0.2470 * 255, 0.2435 * 255, 0.2616 * 255)
_CIFAR100_MEAN = (129.3, 124.1, 112.4)
_CIFAR100_STD = (68.2, 65.4, 70.4)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  train_split: str
  eval_split: str
  augment: str  # 'imagenet', 'cifar' or 'digits'.
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  fixed_size: int = 0  # The only config.data.image_size its pipeline makes, or 0 for any (>= 32).


DATASETS: Dict[str, DatasetInfo] = {
    'imagenet2012': DatasetInfo(1000, 'train', 'validation', 'imagenet', _IMAGENET_MEAN,
                                _IMAGENET_STD),
    'cifar10': DatasetInfo(10, 'train', 'test', 'cifar', _CIFAR10_MEAN, _CIFAR10_STD, 32),
    'cifar100': DatasetInfo(100, 'train', 'test', 'cifar', _CIFAR100_MEAN, _CIFAR100_STD, 32),
    'digits': DatasetInfo(10, 'train', 'test', 'digits', (0.0,) * 3, (1.0,) * 3, 32),  # See below.
    'fashion_mnist': DatasetInfo(10, 'train', 'test', 'cifar', (0.0,) * 3, (1.0,) * 3),  # Below.
}
DIGITS_TEST_SIZE = 360
PROCESS_SPLITS = ('examples', 'files')  # config.data.process_split, see train_batches.
# Datasets held in memory as uint8 arrays (config.data.train_subset applies to them).
ARRAY_DATASETS = ('digits', 'fashion_mnist')
# TFDS metadata (dataset_info.json, label names) of imagenet2012, cifar10 and cifar100 with 64-example
# splits, shipped with the package: `tfds.testing.mock_data(num_examples=64, data_dir=MOCK_METADATA)`
# serves random images in their shapes and split names, with no download (the notebooks' mock
# modes and the tests). Written by tests/make_tfds_metadata.py.
MOCK_METADATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tfds-metadata')
FITS = ('pad', 'resize')  # config.data.fit: how Fashion-MNIST's 28x28 images reach image_size.
# Fashion-MNIST's files per split (images, labels), each also read gzipped (name + '.gz').
FASHION_MNIST_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
                       'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
FASHION_MNIST_HOW = ('Debian and Ubuntu install them in /usr/share/datasets/fashion-mnist with '
                     '`apt-get install dataset-fashion-mnist`; or download the four files from '
                     'https://github.com/zalandoresearch/fashion-mnist')


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """scikit-learn's digits as uint8 32x32x3 images with a fixed (seed 0) 1437/360 split (cached;
  callers must not modify the arrays)."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 8x8 in [0, 16].
  images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)  # Nearest upscaling to 32x32.
  images = np.repeat(images[..., None], 3, axis=-1)
  order = np.random.default_rng(0).permutation(len(images))
  test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
  return {'train': (images[train], digits.target[train].astype(np.int64)),
          'test': (images[test], digits.target[test].astype(np.int64))}


def read_idx(path: str) -> np.ndarray:
  """The uint8 array of an IDX file (the MNIST format; gzipped when the name ends in .gz).

  Raises ValueError naming the file when it is not an IDX file of unsigned bytes or is truncated.
  """
  with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
    try:
      data = f.read()
    except (OSError, EOFError) as e:
      raise ValueError(f'{path} is not a readable IDX file: {e}') from e
  if len(data) < 4 or data[:3] != b'\x00\x00\x08' or not 1 <= data[3] <= 4:
    raise ValueError(f'{path} is not an IDX file of unsigned bytes (its first 4 bytes are '
                     f'{data[:4].hex()}, expected 000008 then the number of dimensions).')
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  offset = 4 + 4 * ndim
  if len(data) != offset + math.prod(shape):
    raise ValueError(f'{path} holds {len(data) - offset} bytes of data; its header {shape} needs '
                     f'{math.prod(shape)} (a truncated or damaged file).')
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def _idx_path(data_dir: str, name: str) -> Optional[str]:
  for candidate in (name, name + '.gz'):
    if os.path.exists(os.path.join(data_dir, candidate)):
      return os.path.join(data_dir, candidate)
  return None


def _fit(images: np.ndarray, size: int, fit: str) -> np.ndarray:
  """N x h x w grey uint8 images -> N x size x size: zeros around them, or a bilinear resize."""
  h, w = images.shape[1:]
  if fit == 'pad':
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left)))
  resized = tf.image.resize(images[..., None], (size, size), method='bilinear', antialias=True)
  return np.clip(np.round(resized.numpy()[..., 0]), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=2)
def _fashion_mnist_arrays(data_dir: str, size: int, fit: str
                          ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """Fashion-MNIST from its IDX files in `data_dir`: size x size x 1 uint8 images, int64 labels."""
  arrays = {}
  for split, names in FASHION_MNIST_FILES.items():
    images, labels = (read_idx(_idx_path(data_dir, name)) for name in names)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
      raise ValueError(f'config.data.data_dir = {data_dir!r}: the {split} files hold images of '
                       f'shape {images.shape} and labels of shape {labels.shape}; Fashion-MNIST '
                       'has N x 28 x 28 images and N labels.')
    if labels.max(initial=0) > 9:
      raise ValueError(f'config.data.data_dir = {data_dir!r}: the {split} labels reach '
                       f'{labels.max()}; Fashion-MNIST has the 10 classes 0..9.')
    arrays[split] = (_fit(images, size, fit)[..., None], labels.astype(np.int64))
  return arrays


def _full_arrays(config: ml_collections.ConfigDict) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  if config.data.dataset == 'digits':
    return _digits_arrays()
  return _fashion_mnist_arrays(os.path.abspath(config.data.data_dir), config.data.image_size,
                               config.data.get('fit', 'pad'))


def subset_indices(total: int, subset: int) -> np.ndarray:
  """The training examples config.data.train_subset = `subset` keeps: a fixed (seed 0) random
  choice, the same for every config.train.seed, in the split's order."""
  return np.sort(np.random.default_rng(0).permutation(total)[:subset])


def _arrays(config: ml_collections.ConfigDict, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """(images, labels) of `split` of an in-memory dataset, its training subset applied."""
  images, labels = _full_arrays(config)[split]
  subset = config.data.get('train_subset', 0)
  if split == dataset_info(config).train_split and subset:
    keep = subset_indices(len(labels), subset)
    images, labels = images[keep], labels[keep]
  return images, labels


@functools.lru_cache(maxsize=4)
def _grey_stats(dataset: str, data_dir: str, size: int, fit: str
                ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
  config = ml_collections.ConfigDict(dict(data=dict(dataset=dataset, data_dir=data_dir,
                                                    image_size=size, fit=fit)))
  images = _full_arrays(config)['train'][0]
  return (float(images.mean()),) * 3, (float(images.std()),) * 3


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Splits, class count, augmentation and normalisation of a validated config's dataset."""
  name = config.data.dataset
  info = DATASETS[name]
  if name in ARRAY_DATASETS:  # Normalised by the grey mean and deviation of the whole train split.
    mean, std = _grey_stats(name, os.path.abspath(config.data.data_dir), config.data.image_size,
                            config.data.get('fit', 'pad'))
    info = dataclasses.replace(info, mean=mean, std=std)
  return info


def validate_data_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of `config.data` (of a valid config.model),
  an unprepared TFDS dataset included, before anything reads the data."""
  d = config.data
  if d.dataset not in DATASETS:
    raise ValueError(f'config.data.dataset = {d.dataset!r} is invalid: allowed: '
                     f'{", ".join(DATASETS)}.')
  if d.process_split not in PROCESS_SPLITS:
    raise ValueError(f'config.data.process_split = {d.process_split!r} is invalid: allowed: '
                     f'{", ".join(PROCESS_SPLITS)}.')
  if not isinstance(d.shuffle_buffer, int) or d.shuffle_buffer < 1:
    raise ValueError(f'config.data.shuffle_buffer = {d.shuffle_buffer!r} is invalid: must be an '
                     'integer >= 1.')
  if not isinstance(d.image_size, int) or d.image_size < 32:
    raise ValueError(f'config.data.image_size = {d.image_size!r} is invalid: must be an integer '
                     '>= 32.')
  if not isinstance(d.get('inception_crop', False), bool):
    raise ValueError(f'config.data.inception_crop = {d.inception_crop!r} is invalid: allowed: '
                     'True, False.')
  if d.get('fit', 'pad') not in FITS:
    raise ValueError(f'config.data.fit = {d.fit!r} is invalid: allowed: {", ".join(FITS)}.')
  subset = d.get('train_subset', 0)
  if not isinstance(subset, int) or isinstance(subset, bool) or subset < 0:
    raise ValueError(f'config.data.train_subset = {subset!r} is invalid: must be an integer >= 0 '
                     '(0 = the whole training split).')
  if subset and d.dataset not in ARRAY_DATASETS:
    raise ValueError(f'config.data.train_subset = {subset} is invalid for config.data.dataset = '
                     f'{d.dataset!r}: a training subset is kept only of the in-memory datasets '
                     f'({", ".join(ARRAY_DATASETS)}); use 0.')
  if d.dataset == 'fashion_mnist':
    missing = [name for names in FASHION_MNIST_FILES.values() for name in names
               if not _idx_path(d.data_dir, name)]
    if missing:
      raise ValueError(f'config.data.data_dir = {d.data_dir!r} is invalid for fashion_mnist: it '
                       f'has no {", ".join(missing)} (nor .gz); give the directory of the four '
                       f'IDX files ({FASHION_MNIST_HOW}).')
  info = DATASETS[d.dataset]
  if config.model.num_classes != info.num_classes:
    raise ValueError(f'config.model.num_classes = {config.model.num_classes} is invalid: '
                     f'{d.dataset} has {info.num_classes} classes.')
  if info.fixed_size and d.image_size != info.fixed_size:
    raise ValueError(f'config.data.image_size = {d.image_size} is invalid: {d.dataset} images '
                     f'are {info.fixed_size}x{info.fixed_size}.')
  _check_prepared(config)


def _check_prepared(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming config.data.dataset / data_dir when a TFDS dataset is not prepared."""
  info = dataset_info(config)
  if config.data.dataset in ARRAY_DATASETS:
    total = len(_full_arrays(config)[info.train_split][1])
    if config.data.get('train_subset', 0) > total:
      raise ValueError(f'config.data.train_subset = {config.data.train_subset} is invalid: the '
                       f'training split of {config.data.dataset} has {total} examples.')
    return
  builder = tfds.builder(config.data.dataset, data_dir=config.data.data_dir or None)
  if not builder.is_prepared():
    how = ('download the ILSVRC2012 train/val tars to <data_dir>/downloads/manual and run '
           '`tfds build imagenet2012 --data_dir=<data_dir>`' if config.data.dataset == 'imagenet2012'
           else f'run `tfds build {config.data.dataset} --data_dir=<data_dir>` on a machine with '
           'network access')
    raise ValueError(f'config.data.dataset = {config.data.dataset!r} is not prepared at '
                     f'config.data.data_dir = {builder.data_dir!r}: {how}.')
  for split in (info.train_split, info.eval_split):
    if split not in builder.info.splits:
      raise ValueError(f'config.data.dataset = {config.data.dataset!r} at {builder.data_dir!r} has '
                       f'no {split!r} split (has {sorted(builder.info.splits)}).')


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in a split of the whole dataset (all processes)."""
  if config.data.dataset in ARRAY_DATASETS:
    return len(_arrays(config, split)[1])
  builder = tfds.builder(config.data.dataset, data_dir=config.data.data_dir or None)
  return builder.info.splits[split].num_examples


class SkipCounter:
  """Counts the records a pipeline skipped as unreadable (read by this process so far)."""

  def __init__(self):
    self._count = tf.Variable(0, dtype=tf.int64, trainable=False)

  @property
  def value(self) -> int:
    return int(self._count.numpy())

  def keep(self, ok: tf.Tensor) -> tf.Tensor:
    self._count.assign_add(tf.cast(tf.logical_not(ok), tf.int64))
    return ok


def jpeg_is_complete(jpeg: tf.Tensor) -> tf.Tensor:
  """True when `jpeg` starts with the JPEG start-of-image marker and has the end-of-image marker in
  its last 64 bytes: truncated files, empty records and other bytes fail. (Damage inside a complete
  file can still stop the decoder.)"""
  length = tf.strings.length(jpeg)
  tail = tf.strings.bytes_split(tf.strings.substr(jpeg, tf.maximum(length - 64, 0), 64))
  eoi = tf.reduce_any(tf.logical_and(tail[:-1] == b'\xff', tail[1:] == b'\xd9'))
  return tf.logical_and(tf.strings.substr(jpeg, 0, 2) == b'\xff\xd8', eoi)


def png_is_complete(png: tf.Tensor) -> tf.Tensor:
  """True when `png` starts with the PNG signature and ends with the IEND chunk."""
  length = tf.strings.length(png)
  return tf.logical_and(tf.strings.substr(png, 0, 8) == b'\x89PNG\r\n\x1a\n',
                        tf.strings.substr(png, tf.maximum(length - 8, 0), 8) == b'IEND\xaeB`\x82')


# Datasets read as encoded bytes (tfds.decode.SkipDecoding), so a damaged image is skipped instead
# of stopping TFDS's decoder: the completeness check of each, and whether the bytes are decoded in
# _records (CIFAR) or by the ImageNet crops (which decode only the crop window).
_ENCODED = {'imagenet2012': (jpeg_is_complete, False), 'cifar10': (png_is_complete, True),
            'cifar100': (png_is_complete, True)}


def _records(config: ml_collections.ConfigDict, split: str, *, process_index: int,
             process_count: int, train: bool, file_seed: int,
             skipped: Optional[SkipCounter] = None) -> Tuple[tf.data.Dataset, int]:
  """This process's raw records of `split` ({'image', 'label'}) and how many were assigned to it.

  With config.data.process_split = 'examples' every process reads the whole split (its callers
  then take its slice of each global batch). Records whose encoded image (ImageNet JPEG, CIFAR PNG)
  is not complete are dropped and counted in `skipped`, so a damaged file costs one example
  instead of the run.
  """
  if config.data.process_split == 'examples':
    process_index, process_count = 0, 1
  total = num_examples(config, split)
  count = total // process_count if train else math.ceil(total / process_count)
  if config.data.dataset in ARRAY_DATASETS:
    images, labels = _arrays(config, split)
    shard = slice(process_index, None, process_count)
    ds = tf.data.Dataset.from_tensor_slices({'image': images[shard], 'label': labels[shard]})
  else:
    builder = tfds.builder(config.data.dataset, data_dir=config.data.data_dir or None)
    decoders = ({'image': tfds.decode.SkipDecoding()}
                if config.data.dataset in _ENCODED else None)
    ds = builder.as_dataset(
        split=tfds.split_for_jax_process(split, process_index=process_index,
                                         process_count=process_count, drop_remainder=train),
        shuffle_files=train, decoders=decoders,
        read_config=tfds.ReadConfig(shuffle_seed=file_seed, interleave_cycle_length=16))
    ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']})
  ds = ds.take(count)
  if config.data.dataset in _ENCODED:
    complete, decode_here = _ENCODED[config.data.dataset]
    counter = skipped or SkipCounter()
    ds = ds.filter(lambda ex: counter.keep(complete(ex['image'])))
    if decode_here:
      ds = ds.map(lambda ex: {'image': tf.ensure_shape(tf.io.decode_png(ex['image'], channels=3),
                                                       (32, 32, 3)), 'label': ex['label']})
  return ds, count


def _normalise(image: tf.Tensor, info: DatasetInfo) -> tf.Tensor:
  image = tf.cast(image, tf.float32)
  return (image - tf.constant(info.mean)) / tf.constant(info.std)


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


def _imagenet_train(jpeg: tf.Tensor, seed: tf.Tensor, size: int, inception: bool) -> tf.Tensor:
  crop_seed, flip_seed, scale_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  if inception:  # Random area 8%-100%, aspect ratio 3/4-4/3, resized to size x size.
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.io.extract_jpeg_shape(jpeg), tf.zeros((1, 0, 4)), seed=crop_seed,
        area_range=(0.08, 1.0), aspect_ratio_range=(0.75, 4 / 3), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
    image = tf.image.resize(image, (size, size), method='bilinear', antialias=True)
  else:  # Paper: shorter side random in [256, 512] (for 224 crops), random crop.
    low, high = round(size * 256 / 224), round(size * 512 / 224)
    shorter = tf.random.stateless_uniform((), scale_seed, low, high + 1, dtype=tf.int32)
    image = _resize_shorter(tf.io.decode_jpeg(jpeg, channels=3), shorter)
    image = tf.image.stateless_random_crop(image, (size, size, 3), seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _imagenet_eval(jpeg: tf.Tensor, size: int) -> tf.Tensor:
  image = _resize_shorter(tf.io.decode_jpeg(jpeg, channels=3), round(size * 256 / 224))
  shape = tf.shape(image)
  top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
  return image[top:top + size, left:left + size]


def preprocess(example: Dict[str, tf.Tensor], seed: tf.Tensor, *, info: DatasetInfo, train: bool,
               image_size: int, inception_crop: bool = False) -> Dict[str, tf.Tensor]:
  """One example -> {'image': float32 normalised HxWx3, 'label': int32}."""
  image = example['image']
  if image.shape.rank == 3 and image.shape[-1] == 1:  # Grey (Fashion-MNIST): the networks take 3 channels.
    image = tf.tile(image, (1, 1, 3))
  if info.augment == 'imagenet':
    image = (_imagenet_train(image, seed, image_size, inception_crop) if train
             else _imagenet_eval(image, image_size))
  elif train:
    image = _pad_crop_flip(image, seed, pad=4 if info.augment == 'cifar' else 2,
                           flip=info.augment == 'cifar')
  image = tf.ensure_shape(_normalise(image, info), (image_size, image_size, 3))
  return {'image': image, 'label': tf.cast(example['label'], tf.int32)}


_CIFAR10_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                  'truck')


def class_names(config: ml_collections.ConfigDict) -> Optional[List[str]]:
  """The names of the classes in label order, when known: the digits, CIFAR-10, Fashion-MNIST,
  ImageNet's WordNet IDs, and any TFDS dataset whose prepared metadata names them; else None."""
  name = config.data.dataset
  if name == 'digits':
    return [str(i) for i in range(10)]
  if name == 'cifar10':
    return list(_CIFAR10_NAMES)
  data_dir = config.data.data_dir if name != 'fashion_mnist' else None
  try:
    names = list(tfds.builder(name, data_dir=data_dir or None).info.features['label'].names)
  except Exception:  # pylint: disable=broad-except  (unknown or unreadable metadata: no names)
    return None
  return None if names == [str(i) for i in range(len(names))] else names


def preprocessing(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """How an image must be prepared for the trained network, as the evaluation prepares it: a JSON
  object that `prepare_image` (and anyone without dsop_jax) follows."""
  info, size = dataset_info(config), config.data.image_size
  recipe: Dict[str, Any] = {
      'input_size': [size, size], 'layout': 'NHWC', 'channel_order': 'RGB', 'dtype': 'float32',
      'value_range': [0, 255], 'mean': list(info.mean), 'std': list(info.std),
      'normalise': '(pixel - mean) / std per channel, pixels in [0, 255]'}
  if info.augment == 'imagenet':
    recipe['resize'] = {'rule': 'shorter_side_then_center_crop',
                        'shorter_side': round(size * 256 / 224), 'crop': [size, size],
                        'method': 'bilinear, antialiased'}
  elif config.data.dataset == 'fashion_mnist':
    fit = config.data.get('fit', 'pad')
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
    x = tf.convert_to_tensor(_fit(grey[None], size, resize['rule'].rsplit('_', 1)[1])[0][..., None])
  elif tuple(x.shape[:2]) != (size, size):
    x = tf.image.resize(x, (size, size), method='bilinear', antialias=True)
  x = tf.cast(x, tf.float32)
  if x.shape[-1] == 1:
    x = tf.tile(x, (1, 1, 3))
  x = (x - tf.constant(recipe['mean'], tf.float32)) / tf.constant(recipe['std'], tf.float32)
  return x.numpy()


def steps_per_epoch(config: ml_collections.ConfigDict, global_batch_size: int) -> int:
  """Training steps per epoch: every process drops the same remainder."""
  return num_examples(config, dataset_info(config).train_split) // global_batch_size


def _slice_of_global_batch(global_batch: int, local_batch: int, process_index: int
                           ) -> Any:
  """Predicate on (global index, example): the example is in this process's slice of its batch."""

  def mine(index: tf.Tensor, example: Any) -> tf.Tensor:
    del example
    return (index % global_batch) // local_batch == process_index

  return mine


def train_batches(config: ml_collections.ConfigDict, *, local_batch_size: int, start_step: int,
                  seed: int, process_index: int = 0, process_count: int = 1,
                  skipped: Optional[SkipCounter] = None) -> Iterator[Dict[str, np.ndarray]]:
  """Endless training batches of this process, starting at global step `start_step`.

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
  info = dataset_info(config)
  global_batch = local_batch_size * process_count
  per_epoch = steps_per_epoch(config, global_batch)
  if per_epoch < 1:
    raise ValueError(f'config.train.batch_size = {global_batch} is larger '
                     f'than the training split of {config.data.dataset!r}.')
  by_example = config.data.process_split == 'examples'
  epoch, offset = divmod(start_step, per_epoch)
  while True:
    epoch_seed = seed * 1_000_003 + epoch
    ds, count = _records(config, info.train_split, process_index=process_index,
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
        image_size=config.data.image_size, inception_crop=config.data.get('inception_crop', False)),
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
  total = num_examples(config, dataset_info(config).eval_split)
  if config.data.process_split == 'examples':
    return math.ceil(total / global_batch_size)
  return math.ceil(math.ceil(total / process_count) / (global_batch_size // process_count))


def eval_batches(config: ml_collections.ConfigDict, *, local_batch_size: int, process_index: int = 0,
                 process_count: int = 1, skipped: Optional[SkipCounter] = None
                 ) -> Iterator[Dict[str, np.ndarray]]:
  """Every eval example once, in batches padded to full size; 'mask' marks real examples.

  Every process yields the same number of batches (`eval_steps`), all-padding ones included, so the
  collective eval step runs in lockstep on all hosts. With config.data.process_split = 'examples'
  each process takes its slice of every global batch, as in training, so the sums are grouped the
  same way whatever the number of processes. Unreadable records are skipped (counted in `skipped`):
  the metrics are then over the readable images.
  """
  info = dataset_info(config)
  ds, _ = _records(config, info.eval_split, process_index=process_index,
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
  empty = {'image': np.zeros((0, size, size, 3), np.float32), 'label': np.zeros((0,), np.int32)}
  for _ in range(steps - produced):
    yield _pad(empty, local_batch_size)


def _pad(batch: Dict[str, Any], size: int) -> Dict[str, np.ndarray]:
  n = len(batch['label'])
  pad = lambda a: np.concatenate([a, np.zeros((size - n,) + a.shape[1:], a.dtype)])  # noqa: E731
  return {'image': pad(batch['image']), 'label': pad(batch['label']),
          'mask': np.arange(size) < n}
