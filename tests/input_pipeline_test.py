"""Input pipelines on the real digits and on TFDS mock data: shapes and normalisation, determinism and
exact resume, per-process shards that split the data, padded eval batches that cover it once."""

import itertools
import os

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dsop_jax.configs import cifar_resnet20
from dsop_jax.configs import imagenet_r18
from dsop_jax.configs import quickstart
from dsop_jax.data import datasets
from dsop_jax.data import image_files
from dsop_jax.data import input_pipeline as ip
from dsop_jax.training import steps
from tests import train_helpers

METADATA = datasets.MOCK_METADATA


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def test_digits_batches_shapes_and_normalisation():
  config = quickstart.get_config()
  assert datasets.num_examples(config, 'train') == 1437 and datasets.num_examples(config, 'test') == 360
  (batch,) = _take(ip.train_batches(config, local_batch_size=64, start_step=0, seed=0), 1)
  # Training images travel as uint8 and are normalised on the device, as the train step does.
  assert batch['image'].shape == (64, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and set(batch['label']) <= set(range(10))
  info = datasets.dataset_info(config)
  images = np.asarray(steps.normalise_images(jnp.asarray(batch['image']), info.mean, info.std))
  assert images.dtype == np.float32
  # Bit for bit what float32 normalisation on the host gave (IEEE division, not a reciprocal).
  host = (batch['image'].astype(np.float32) - np.float32(info.mean[0])) / np.float32(info.std[0])
  np.testing.assert_array_equal(images, host)
  assert abs(float(images.mean())) < 0.2 and 0.8 < float(images.std()) < 1.2
  (evaluation,) = _take(ip.eval_batches(config, local_batch_size=64), 1)
  assert evaluation['image'].dtype == np.uint8  # Normalised on the device, as training's.


def test_same_seed_same_batches_and_resume_mid_epoch_and_across_epochs():
  config = quickstart.get_config()
  run = lambda start, seed=0: ip.train_batches(config, local_batch_size=64, start_step=start,
                                               seed=seed)
  full = _take(run(0), 30)  # 22 steps per epoch: crosses into epoch 2.
  for start in (5, 22, 25):
    for a, b in zip(full[start:], _take(run(start), 30 - start)):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])
  assert not np.array_equal(full[0]['label'], full[22]['label'])  # Reshuffled each epoch.
  assert not np.array_equal(full[0]['label'], _take(run(0, seed=1), 1)[0]['label'])


@pytest.mark.parametrize('split', ['examples', 'files'])
def test_process_shards_are_disjoint_and_eval_covers_everything_once(split):
  config = quickstart.get_config()
  config.data.process_split = split
  per_process = [list(ip.eval_batches(config, local_batch_size=70, process_index=index,
                                      process_count=2)) for index in range(2)]
  assert [len(b) for b in per_process] == [ip.eval_steps(config, 140, process_count=2)] * 2 == [3, 3]
  labels = [np.concatenate([b['label'][b['mask']] for b in batches]) for batches in per_process]
  if split == 'examples':  # Slices of the 1-process global batches, in the same order.
    single = np.concatenate([b['label'][b['mask']]
                             for b in ip.eval_batches(config, local_batch_size=140)])
    joined = [np.concatenate([p[step]['label'][p[step]['mask']] for p in per_process])
              for step in range(3)]
    np.testing.assert_array_equal(np.concatenate(joined), single)
  assert sum(len(x) for x in labels) == 360
  _, test_labels = datasets._digits_arrays()['test']  # pylint: disable=protected-access
  assert sorted(np.concatenate(labels)) == sorted(test_labels)


def test_process_example_split_gives_the_single_process_global_batches():
  """process_split='examples': the slices of 2 processes make up exactly the 1-process batches
  (images with their augmentation, and labels), also after a resume and across an epoch."""
  config = quickstart.get_config()
  single = _take(ip.train_batches(config, local_batch_size=64, start_step=20, seed=3), 4)
  parts = [_take(ip.train_batches(config, local_batch_size=32, start_step=20, seed=3,
                                  process_index=p, process_count=2), 4) for p in range(2)]
  for step, batch in enumerate(single):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]), batch[key])
  first = lambda: next(ip.train_batches(config, local_batch_size=32, start_step=0, seed=3,
                                        process_index=0, process_count=2))
  by_example = first()
  config.data.process_split = 'files'  # Each process shuffles its own shard: another order.
  by_file = first()
  assert by_file['image'].shape == (32, 32, 32, 3)
  assert not np.array_equal(by_file['label'], by_example['label'])
  config.data.process_split = 'hosts'
  with pytest.raises(ValueError, match="config.data.process_split = 'hosts' is invalid: allowed: "
                                       'examples, files'):
    ip.validate_data_config(config)


@pytest.mark.parametrize('inception', [False, True])
def test_imagenet_mock_pipeline(inception):
  config = imagenet_r18.get_config()
  config.data.image_size = 64
  config.data.inception_crop = inception
  with tfds.testing.mock_data(num_examples=64, data_dir=METADATA):
    ip.validate_data_config(config)
    batches = _take(ip.train_batches(config, local_batch_size=8, start_step=0, seed=0), 3)
    resumed = _take(ip.train_batches(config, local_batch_size=8, start_step=2, seed=0), 1)
    evals = list(ip.eval_batches(config, local_batch_size=24))
  assert batches[0]['image'].shape == (8, 64, 64, 3)
  np.testing.assert_array_equal(batches[2]['image'], resumed[0]['image'])
  assert len(evals) == 3 and sum(int(b['mask'].sum()) for b in evals) == 64
  assert not evals[-1]['mask'][16:].any()


def test_dataset_name_is_validated():
  config = quickstart.get_config()
  config.data.dataset = 'svhn'
  with pytest.raises(ValueError, match="config.data.dataset = 'svhn' is invalid: allowed: "):
    ip.validate_data_config(config)


def _records_with_damage(bad, png):
  """An `as_dataset_fn` for tfds.testing.mock_data: 64 real JPEGs (ImageNet) or 32x32 PNGs
  (CIFAR), label = index, some damaged."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  encoded = []
  for i in range(64):
    if png:
      data = tf.io.encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).numpy()
    else:
      data = tf.io.encode_jpeg(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).numpy()
    encoded.append({'truncated': data[:len(data) // 2], 'empty': b'',
                    'other': b'GIF89a' + data[6:]}.get(bad.get(i), data))

  def as_dataset(self, split, **kwargs):
    del self, split, kwargs
    extra = {'id': [str(i) for i in range(64)]} if png else {
        'file_name': [f'{i}.JPEG' for i in range(64)]}
    return tf.data.Dataset.from_tensor_slices({'image': encoded, 'label': np.arange(64), **extra})
  return as_dataset


@pytest.mark.parametrize('dataset', ['imagenet2012', 'cifar10'])
def test_unreadable_images_are_skipped_counted_and_epochs_keep_their_length(dataset):
  bad = {3: 'truncated', 17: 'empty', 40: 'other'}
  if dataset == 'cifar10':
    config = cifar_resnet20.get_config('cifar10')
  else:
    config = imagenet_r18.get_config()
    config.data.image_size = 32
  config.data.shuffle_buffer = 64
  with tfds.testing.mock_data(num_examples=64, data_dir=METADATA,
                              as_dataset_fn=_records_with_damage(bad, dataset == 'cifar10')):
    train_skips, eval_skips = datasets.SkipCounter(), datasets.SkipCounter()
    batches = _take(ip.train_batches(config, local_batch_size=8, start_step=0, seed=0,
                                     skipped=train_skips), 16)  # Two epochs of 8 steps.
    resumed = _take(ip.train_batches(config, local_batch_size=8, start_step=5, seed=0), 11)
    evals = list(ip.eval_batches(config, local_batch_size=24, skipped=eval_skips))
  assert [b['image'].shape for b in batches] == [(8, 32, 32, 3)] * 16
  for epoch in (batches[:8], batches[8:]):
    labels = np.concatenate([b['label'] for b in epoch])
    assert not set(labels) & set(bad)  # Never trained on.
    assert len(set(labels)) == 61  # Every readable one, and 3 repeated to keep 8 batches.
  assert train_skips.value == 3  # Each epoch met all three: counted once each.
  for a, b in zip(batches[5:], resumed):  # Exact resume still holds.
    np.testing.assert_array_equal(a['image'], b['image'])
  assert len(evals) == 3 and sum(int(b['mask'].sum()) for b in evals) == 61
  assert eval_skips.value == 3
  assert not set(np.concatenate([b['label'][b['mask']] for b in evals])) & set(bad)


def fashion_config(data_dir, **data):
  config = quickstart.get_config()
  config.data.update(dataset='fashion_mnist', data_dir=str(data_dir), shuffle_buffer=64, **data)
  return config


def test_fashion_mnist_from_idx_files_padded_or_resized(tmp_path):
  directory = train_helpers.write_fashion_mnist(tmp_path / 'fmnist')
  config = fashion_config(directory)
  ip.validate_data_config(config)
  assert datasets.num_examples(config, 'train') == 40 and datasets.num_examples(config, 'test') == 12
  info = datasets.dataset_info(config)
  assert info.num_classes == 10 and info.augment == 'cifar' and len(set(info.mean)) == 1
  (batch,) = _take(ip.eval_batches(config, local_batch_size=12), 1)
  assert batch['image'].shape == (12, 32, 32, 3)
  np.testing.assert_array_equal(batch['label'], np.arange(12) % 10)
  # Padded: 2 zero pixels around the 28x28 image; the three channels are the grey one.
  raw = datasets.read_idx(os.path.join(directory, 't10k-images-idx3-ubyte'))
  pixels = batch['image']  # uint8: the grey pixels themselves.
  np.testing.assert_array_equal(pixels[:, 2:30, 2:30, 0], raw)
  assert pixels[:, :2].max() == 0 and np.array_equal(pixels[..., 0], pixels[..., 2])
  (train,) = _take(ip.train_batches(config, local_batch_size=8, start_step=0, seed=0), 1)
  assert train['image'].shape == (8, 32, 32, 3)
  config.data.update(fit='resize', image_size=40)
  (resized,) = _take(ip.eval_batches(config, local_batch_size=12), 1)
  assert resized['image'].shape == (12, 40, 40, 3)
  assert resized['image'][:, :2].max() > 1  # Resized: no zero border.


def test_train_subset_is_fixed_over_seeds_and_only_for_in_memory_datasets(tmp_path):
  config = fashion_config(train_helpers.write_fashion_mnist(tmp_path / 'fmnist'), train_subset=16)
  assert datasets.num_examples(config, 'train') == 16 and datasets.num_examples(config, 'test') == 12
  kept = datasets.subset_indices(40, 16)
  expected = sorted(np.arange(40)[kept] % 10)
  for seed in (0, 1):  # One epoch of each seed: the same 16 examples, in another order.
    (batch,) = _take(ip.train_batches(config, local_batch_size=16, start_step=0, seed=seed), 1)
    assert sorted(batch['label']) == expected
  # config.data.train_subset_seed draws another subset, as fixed over training seeds.
  other = fashion_config(config.data.data_dir, train_subset=16, train_subset_seed=3)
  other_kept = datasets.subset_indices(40, 16, 3)
  assert sorted(other_kept) != sorted(kept)
  (batch,) = _take(ip.train_batches(other, local_batch_size=16, start_step=0, seed=0), 1)
  assert sorted(batch['label']) == sorted(np.arange(40)[other_kept] % 10) != expected
  digits = quickstart.get_config()
  digits.data.train_subset = 100
  assert datasets.num_examples(digits, 'train') == 100 and datasets.num_examples(digits, 'test') == 360
  for change, message in [
      (dict(train_subset=41), r'config.data.train_subset = 41 is invalid: the training split of '
                              r'fashion_mnist has 40 examples'),
      (dict(train_subset=-1), r'config.data.train_subset = -1 is invalid: must be an integer >= 0'),
      (dict(train_subset_seed=-2), r'config.data.train_subset_seed = -2 is invalid: must be an '
                                   r'integer >= 0'),
      (dict(fit='crop'), r"config.data.fit = 'crop' is invalid: allowed: pad, resize"),
      (dict(data_dir=str(tmp_path / 'none')), r"config.data.data_dir = '.*none' is invalid for "
                                              r'fashion_mnist: it has no train-images-idx3-ubyte, '
                                              r'.*apt-get install dataset-fashion-mnist')]:
    bad = fashion_config(config.data.data_dir, train_subset=16)
    bad.data.update(change)
    with pytest.raises(ValueError, match=message):
      ip.validate_data_config(bad)
  cifar = cifar_resnet20.get_config('cifar10')
  cifar.data.train_subset = 100
  with pytest.raises(ValueError, match=r"train_subset = 100 is invalid for config.data.dataset = "
                                       r"'cifar10': .* in-memory datasets \(digits, fashion_mnist\)"):
    ip.validate_data_config(cifar)


def test_damaged_idx_files_are_named(tmp_path):
  path = str(tmp_path / 'images')
  train_helpers.write_idx(path, np.zeros((3, 28, 28), np.uint8))
  assert datasets.read_idx(path).shape == (3, 28, 28)
  with open(path, 'r+b') as f:
    f.truncate(4 + 12 + 100)
  with pytest.raises(ValueError, match=r'images holds 100 bytes of data; its header \(3, 28, 28\) '
                                       r'needs 2352 \(a truncated or damaged file\)'):
    datasets.read_idx(path)
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n')
  with pytest.raises(ValueError, match=r'images is not an IDX file of unsigned bytes'):
    datasets.read_idx(path)


def _whole_image_crops(jpeg, seed, size=224):
  """The scale-jitter training crop and the evaluation centre crop as the pipeline made them by
  decoding and resizing the whole image (the reference the window decode must reproduce)."""
  decoded = tf.io.decode_jpeg(jpeg, channels=3, dct_method=image_files.JPEG_DCT)
  crop_seed, flip_seed, scale_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  shorter = tf.random.stateless_uniform((), scale_seed, 256, 513, dtype=tf.int32)
  train = tf.image.stateless_random_crop(ip._resize_shorter(decoded, shorter), (size, size, 3),
                                         seed=crop_seed)
  train = tf.image.stateless_random_flip_left_right(train, flip_seed)
  resized = ip._resize_shorter(decoded, 256)
  top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
  return train, resized[top:top + size, left:left + size]


# Window decode against whole-image decode, measured on these images and 4 seeds each: at most
# 0.005 of 255 apart (float32 rounding; JPEG's window decode gives the same pixels).
WINDOW_TOLERANCE = 0.01


def test_decoding_only_the_crop_window_reproduces_the_whole_image_crops():
  """Photo-like JPEGs of several sizes and aspect ratios (smooth content and per-pixel noise, so a
  crop shifted by one source pixel differs by far more than the tolerance): the training crops
  of `_imagenet_train` (shorter side random in [256, 512], random crop, flip) and the evaluation
  centre crops of `_imagenet_eval`, decoding only their window, agree with the whole-image ones
  within WINDOW_TOLERANCE: same offsets, same region, same interpolation weights."""
  rng = np.random.default_rng(0)
  for trial, (h, w) in enumerate([(375, 500), (500, 333), (257, 300), (768, 1024), (300, 1200)]):
    y, x = np.mgrid[0:h, 0:w]
    smooth = 127 + 60 * np.sin(x / 17.0 + trial) + 50 * np.cos(y / 23.0)
    image = (smooth[..., None] + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
    jpeg = tf.io.encode_jpeg(image, quality=90)
    for s in range(4):
      seed = tf.constant([trial, s], tf.int64)
      train, centre = _whole_image_crops(jpeg, seed)
      np.testing.assert_allclose(ip._imagenet_train(jpeg, seed, 224, False), train,
                                 atol=WINDOW_TOLERANCE, rtol=0)
    np.testing.assert_allclose(ip._imagenet_eval(jpeg, 224, 256), centre, atol=WINDOW_TOLERANCE,
                               rtol=0)
