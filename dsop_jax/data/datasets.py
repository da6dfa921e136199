"""Where examples come from: every dataset dsop_jax reads, as raw records of one split.

Sources: ImageNet and CIFAR-10/100 from TFDS (read as encoded bytes, damaged images skipped and
counted), any other TFDS image-classification dataset by name (its image and class-label features,
class count and splits read from the builder's info), a folder of images in torchvision's
ImageFolder layout (`ROOT/<split>/<class>/*.jpg|png`, classes sorted by name), and two datasets
held in memory: scikit-learn's digits and Fashion-MNIST from its IDX files (config.data.train_subset
keeps a fixed subset of their training split). `dataset_info` says what each has (classes, splits,
default augmentation and normalisation); `records` yields {'image', 'label'} of a split, this
process's share; input_pipeline turns them into batches.
"""

import dataclasses
import functools
import gzip
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from dsop_jax.data import image_files

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
  augment: str  # The default augmentation: one of AUGMENTATIONS.
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  fixed_size: int = 0  # The only config.data.image_size its pipeline makes, or 0 for any (>= 32).


DATASETS: Dict[str, DatasetInfo] = {
    'imagenet2012': DatasetInfo(1000, 'train', 'validation', 'imagenet', _IMAGENET_MEAN,
                                _IMAGENET_STD),
    'cifar10': DatasetInfo(10, 'train', 'test', 'cifar', _CIFAR10_MEAN, _CIFAR10_STD, 32),
    'cifar100': DatasetInfo(100, 'train', 'test', 'cifar', _CIFAR100_MEAN, _CIFAR100_STD, 32),
    'digits': DatasetInfo(10, 'train', 'test', 'small', (0.0,) * 3, (1.0,) * 3, 32),  # See below.
    'fashion_mnist': DatasetInfo(10, 'train', 'test', 'cifar', (0.0,) * 3, (1.0,) * 3),  # Below.
}
DIGITS_TEST_SIZE = 360
# config.data.augment: 'imagenet' (scale jitter or Inception crop, flip; eval: resize + centre
# crop), 'finegrained' (resize + centre crop + flip, as fine-tuning on CUB in the official
# iSQRT-COV code), 'cifar' (pad 4, crop, flip), 'small' (pad 2, crop, no flip: small grey images
# such as digits, where a mirror image is another glyph); '' = the dataset's own.
AUGMENTATIONS = ('imagenet', 'finegrained', 'cifar', 'small')
FOLDER = 'folder'  # config.data.dataset for an ImageFolder tree at config.data.data_dir.
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


def fit_grey(images: np.ndarray, size: int, fit: str) -> np.ndarray:
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
    arrays[split] = (fit_grey(images, size, fit)[..., None], labels.astype(np.int64))
  return arrays


def _full_arrays(config: ml_collections.ConfigDict) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  if config.data.dataset == 'digits':
    return _digits_arrays()
  return _fashion_mnist_arrays(os.path.abspath(config.data.data_dir), config.data.image_size,
                               config.data.fit)


def subset_indices(total: int, subset: int, seed: int = 0) -> np.ndarray:
  """The training examples config.data.train_subset = `subset` keeps: a random choice fixed by
  config.data.train_subset_seed = `seed` (the same for every config.train.seed), in the split's
  order."""
  return np.sort(np.random.default_rng(seed).permutation(total)[:subset])


def _arrays(config: ml_collections.ConfigDict, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """(images, labels) of `split` of an in-memory dataset, its training subset applied."""
  images, labels = _full_arrays(config)[split]
  subset = config.data.train_subset
  if split == dataset_info(config).train_split and subset:
    keep = subset_indices(len(labels), subset, config.data.train_subset_seed)
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
  """Splits, class count, augmentation and normalisation of a validated config's dataset, with
  config.data's train_split, eval_split, augment, mean and std where they are set."""
  d = config.data
  name = d.dataset
  if name in DATASETS:
    info = DATASETS[name]
    if name in ARRAY_DATASETS:  # Normalised by the grey mean and deviation of the train split.
      mean, std = _grey_stats(name, os.path.abspath(d.data_dir), d.image_size, d.fit)
      info = dataclasses.replace(info, mean=mean, std=std)
  elif name == FOLDER:
    classes = image_files.folder_classes(d.data_dir, d.train_split or 'train')
    info = DatasetInfo(len(classes), 'train', 'val', 'imagenet', (), ())
  else:  # Any TFDS image-classification dataset: ImageNet's statistics, as pretrained weights.
    builder_info = _builder(config).info
    _, label = tfds_keys(builder_info, name)
    splits = list(builder_info.splits)
    eval_split = next((s for s in ('validation', 'test', 'val') if s in splits), 'test')
    info = DatasetInfo(builder_info.features[label].num_classes, 'train', eval_split, 'imagenet',
                       _IMAGENET_MEAN, _IMAGENET_STD)
  info = dataclasses.replace(
      info, train_split=d.train_split or info.train_split,
      eval_split=d.eval_split or info.eval_split, augment=d.augment or info.augment)
  if d.mean:
    info = dataclasses.replace(info, mean=tuple(d.mean), std=tuple(d.std))
  elif name == FOLDER:
    mean, std = image_files.folder_stats(d.data_dir, info.train_split, d.image_size)
    info = dataclasses.replace(info, mean=mean, std=std)
  return info


def _builder(config: ml_collections.ConfigDict) -> Any:
  return tfds.builder(config.data.dataset, data_dir=config.data.data_dir or None)


def tfds_keys(info: Any, name: str) -> Tuple[str, str]:
  """(image feature, class-label feature) of a TFDS dataset: 'image' and 'label' when they are
  an Image and a ClassLabel, else its only ones.

  Raises:
    ValueError: the dataset has no such pair (not an image-classification dataset).
  """
  features = info.features
  found = []
  for kind, preferred in ((tfds.features.Image, 'image'), (tfds.features.ClassLabel, 'label')):
    if preferred in features and isinstance(features[preferred], kind):
      found.append(preferred)
      continue
    of_kind = [k for k, f in features.items() if isinstance(f, kind)]
    if len(of_kind) != 1:
      raise ValueError(f'config.data.dataset = {name!r} is invalid: it is not an image-'
                       f'classification dataset with one {kind.__name__} feature (its features: '
                       f'{", ".join(f"{k}: {type(f).__name__}" for k, f in features.items())}).')
    found.append(of_kind[0])
  return found[0], found[1]


def validate_source(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of what config.data reads (dataset,
  data_dir, splits, train_subset, the class count against config.model.num_classes), an
  unprepared TFDS dataset included, before anything reads the data."""
  d = config.data
  subset = d.train_subset
  if not isinstance(subset, int) or isinstance(subset, bool) or subset < 0:
    raise ValueError(f'config.data.train_subset = {subset!r} is invalid: must be an integer >= 0 '
                     '(0 = the whole training split).')
  subset_seed = d.train_subset_seed
  if not isinstance(subset_seed, int) or isinstance(subset_seed, bool) or subset_seed < 0:
    raise ValueError(f'config.data.train_subset_seed = {subset_seed!r} is invalid: must be an '
                     'integer >= 0 (the seed of the permutation that draws the training subset).')
  if subset and d.dataset not in ARRAY_DATASETS:
    raise ValueError(f'config.data.train_subset = {subset} is invalid for config.data.dataset = '
                     f'{d.dataset!r}: a training subset is kept only of the in-memory datasets '
                     f'({", ".join(ARRAY_DATASETS)}); use 0.')
  for field in ('train_split', 'eval_split'):
    if not isinstance(d[field], str):
      raise ValueError(f'config.data.{field} = {d[field]!r} is invalid: give a split name, or '
                       "'' for the dataset's own.")
  if d.dataset == 'fashion_mnist':
    missing = [name for names in FASHION_MNIST_FILES.values() for name in names
               if not _idx_path(d.data_dir, name)]
    if missing:
      raise ValueError(f'config.data.data_dir = {d.data_dir!r} is invalid for fashion_mnist: it '
                       f'has no {", ".join(missing)} (nor .gz); give the directory of the four '
                       f'IDX files ({FASHION_MNIST_HOW}).')
  if d.dataset == FOLDER:
    _check_folder(config)
  elif d.dataset not in DATASETS:
    try:
      _builder(config)
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(f'config.data.dataset = {d.dataset!r} is invalid: allowed: '
                       f'{", ".join(DATASETS)}, {FOLDER} (an image folder at data_dir), or the '
                       'name of a TFDS image-classification dataset (e.g. caltech_birds2011, '
                       'oxford_flowers102).') from None
  info = dataset_info(config)
  if config.model.num_classes != info.num_classes:
    raise ValueError(f'config.model.num_classes = {config.model.num_classes} is invalid: '
                     f'{d.dataset} has {info.num_classes} classes.')
  if info.fixed_size and d.image_size != info.fixed_size and not d.augment:
    raise ValueError(f'config.data.image_size = {d.image_size} is invalid: {d.dataset} images '
                     f'are {info.fixed_size}x{info.fixed_size}.')
  _check_prepared(config)


def _check_folder(config: ml_collections.ConfigDict) -> None:
  """An ImageFolder tree: classes in the training split, images in both splits, no class in the
  evaluation split that training does not have."""
  d = config.data
  train, evaluation = d.train_split or 'train', d.eval_split or 'val'
  classes = image_files.folder_classes(d.data_dir, train)
  layout = (f'expected {os.path.join(d.data_dir or "ROOT", train)}/<class>/*.jpg|png and '
            f'{os.path.join(d.data_dir or "ROOT", evaluation)}/<class>/... (ImageFolder layout)')
  if not classes:
    raise ValueError(f'config.data.data_dir = {d.data_dir!r} is invalid for dataset {FOLDER}: no '
                     f'class directory in {os.path.join(d.data_dir, train)}; {layout}.')
  others = [c for c in image_files.folder_classes(d.data_dir, evaluation) if c not in classes]
  if others:
    raise ValueError(f'config.data.data_dir = {d.data_dir!r}: the {evaluation!r} split has '
                     f'classes the {train!r} split lacks: {others[:5]}; both must use the same '
                     'class directories.')
  for split in (train, evaluation):
    if not image_files.folder_files(d.data_dir, split, tuple(classes))[0]:
      raise ValueError(f'config.data.data_dir = {d.data_dir!r} is invalid for dataset {FOLDER}: '
                       f'no .jpg, .jpeg or .png file in {os.path.join(d.data_dir, split)}; '
                       f'{layout}.')
  # As torchvision's ImageFolder: a class without an image is an error, not a class never seen.
  counts = image_files.class_counts(d.data_dir, train, tuple(classes))
  empty = [c for c, n in zip(classes, counts) if not n]
  if empty:
    raise ValueError(f'config.data.data_dir = {d.data_dir!r} is invalid for dataset {FOLDER}: the '
                     f'class director{"y" if len(empty) == 1 else "ies"} {empty[:5]} in '
                     f'{os.path.join(d.data_dir, train)} hold{"s" if len(empty) == 1 else ""} no '
                     '.jpg, .jpeg or .png file (subdirectories included): add images or remove '
                     'the directory.')
  if len(classes) < 2:
    raise ValueError(f'config.data.data_dir = {d.data_dir!r} is invalid for dataset {FOLDER}: '
                     f'{os.path.join(d.data_dir, train)} has one class directory ({classes[0]!r}); '
                     'a classifier needs at least two classes (one trains to 100% top-1 on '
                     'nothing).')


def _check_prepared(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming config.data.dataset / data_dir when a TFDS dataset is not prepared."""
  info = dataset_info(config)
  if config.data.dataset == FOLDER:
    return
  if config.data.dataset in ARRAY_DATASETS:
    total = len(_full_arrays(config)[info.train_split][1])
    if config.data.train_subset > total:
      raise ValueError(f'config.data.train_subset = {config.data.train_subset} is invalid: the '
                       f'training split of {config.data.dataset} has {total} examples.')
    return
  builder = _builder(config)
  if not builder.is_prepared():
    how = ('download the ILSVRC2012 train/val tars to <data_dir>/downloads/manual and run '
           '`tfds build imagenet2012 --data_dir=<data_dir>`' if config.data.dataset == 'imagenet2012'
           else f'run `tfds build {config.data.dataset} --data_dir=<data_dir>` on a machine with '
           'network access')
    raise ValueError(f'config.data.dataset = {config.data.dataset!r} is not prepared at '
                     f'config.data.data_dir = {builder.data_dir!r}: {how}.')
  for field, split in (('train_split', info.train_split), ('eval_split', info.eval_split)):
    if split not in builder.info.splits:
      raise ValueError(f'config.data.{field}: config.data.dataset = {config.data.dataset!r} at '
                       f'{builder.data_dir!r} has no {split!r} split (has '
                       f'{sorted(builder.info.splits)}).')


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in a split of the whole dataset (all processes)."""
  if config.data.dataset in ARRAY_DATASETS:
    return len(_arrays(config, split)[1])
  if config.data.dataset == FOLDER:
    return len(_folder_split(config, split)[0])
  return _builder(config).info.splits[split].num_examples


def _folder_split(config: ml_collections.ConfigDict, split: str) -> Tuple[List[str], List[int]]:
  train = config.data.train_split or 'train'
  classes = image_files.folder_classes(config.data.data_dir, train)
  return image_files.folder_files(config.data.data_dir, split, tuple(classes))


class SkipCounter:
  """Counts the unreadable records a pipeline skipped, each once: every pass over a split (an
  epoch, its top-up, the next epoch, each evaluation) meets the same records, in whatever order,
  so the count is the most one pass has skipped, the pass under way included."""

  def __init__(self):
    self._this_pass = tf.Variable(0, dtype=tf.int64, trainable=False)
    self._most = tf.Variable(0, dtype=tf.int64, trainable=False)

  @property
  def value(self) -> int:
    return int(self._most.numpy())

  def keep(self, ok: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """`ok`, counting it when it is False; `index`: the record's position in its pass (0 starts
    a new pass)."""
    count = tf.where(index == 0, tf.constant(0, tf.int64), self._this_pass)
    count = self._this_pass.assign(count + tf.cast(tf.logical_not(ok), tf.int64))
    self._most.assign(tf.maximum(self._most, count))
    return ok


# Datasets read as encoded bytes (tfds.decode.SkipDecoding), so a damaged image is skipped instead
# of stopping TFDS's decoder: the completeness check of each, and whether the bytes are decoded in
# _records (CIFAR) or by the ImageNet crops (which decode only the crop window).
_ENCODED = {'imagenet2012': (image_files.jpeg_is_complete, False),
            'cifar10': (image_files.png_is_complete, True),
            'cifar100': (image_files.png_is_complete, True)}


def records(config: ml_collections.ConfigDict, split: str, *, process_index: int,
             process_count: int, train: bool, file_seed: int,
             skipped: Optional[SkipCounter] = None) -> Tuple[tf.data.Dataset, int]:
  """This process's raw records of `split` ({'image', 'label'}) and how many were assigned to it.

  With config.data.process_split = 'examples' every process reads the whole split (its callers
  then take its slice of each global batch). Records whose encoded image (JPEG or PNG: every
  source but the in-memory ones) is not complete are dropped and counted in `skipped`, so a
  damaged file costs one example instead of the run. ImageNet's stay JPEG bytes (its crops decode
  only their window); the others are decoded here to H x W x 3 uint8.
  """
  if config.data.process_split == 'examples':
    process_index, process_count = 0, 1
  total = num_examples(config, split)
  count = total // process_count if train else math.ceil(total / process_count)
  name = config.data.dataset
  shard = slice(process_index, None, process_count)
  if name in ARRAY_DATASETS:
    images, labels = _arrays(config, split)
    ds = tf.data.Dataset.from_tensor_slices({'image': images[shard], 'label': labels[shard]})
  elif name == FOLDER:  # Files in sorted order; the training pipeline shuffles them.
    paths, labels = _folder_split(config, split)
    ds = tf.data.Dataset.from_tensor_slices({'path': paths[shard], 'label': labels[shard]}).map(
        lambda ex: {'image': tf.io.read_file(ex['path']), 'label': ex['label']})
  else:
    builder = _builder(config)
    image, label = ('image', 'label') if name in DATASETS else tfds_keys(builder.info, name)
    ds = builder.as_dataset(
        split=tfds.split_for_jax_process(split, process_index=process_index,
                                         process_count=process_count, drop_remainder=train),
        shuffle_files=train, decoders={image: tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=file_seed, interleave_cycle_length=16))
    ds = ds.map(lambda ex: {'image': ex[image], 'label': ex[label]})
  ds = ds.take(count)
  if name not in ARRAY_DATASETS:
    complete, decode_here = _ENCODED.get(name, (image_files.image_is_complete, True))
    counter = skipped or SkipCounter()
    ds = ds.enumerate().filter(lambda i, ex: counter.keep(complete(ex['image']), i)).map(
        lambda i, ex: ex)
    if decode_here:
      ds = ds.map(lambda ex: {'image': image_files.decode(ex['image']), 'label': ex['label']})
  return ds, count



_CIFAR10_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                  'truck')


def class_names(config: ml_collections.ConfigDict) -> Optional[List[str]]:
  """The names of the classes in label order, when known: the digits, CIFAR-10, Fashion-MNIST,
  an image folder's class directories, ImageNet's WordNet IDs, and any TFDS dataset whose
  prepared metadata names them; else None."""
  name = config.data.dataset
  if name == 'digits':
    return [str(i) for i in range(10)]
  if name == 'cifar10':
    return list(_CIFAR10_NAMES)
  if name == FOLDER:
    train = config.data.train_split or 'train'
    return image_files.folder_classes(config.data.data_dir, train) or None
  data_dir = config.data.data_dir if name != 'fashion_mnist' else None
  try:
    info = tfds.builder(name, data_dir=data_dir or None).info
    names = list(info.features[tfds_keys(info, name)[1]].names)
  except Exception:  # pylint: disable=broad-except  (unknown or unreadable metadata: no names)
    return None
  return None if names == [str(i) for i in range(len(names))] else names
