"""Encoded image files and ImageFolder trees: completeness checks of JPEG and PNG bytes (a damaged
file is skipped and counted, not fatal), decoding, and a folder of images in torchvision's
ImageFolder layout (ROOT/<split>/<class>/*.jpg|jpeg|png: classes sorted by name, files, and the
pixel statistics its normalisation is computed from). A local folder is walked as torchvision's
ImageFolder walks it (os.walk, following links); one on an object store through tf.io.gfile.
"""

import functools
import os
from typing import List, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

tf.config.set_visible_devices([], 'GPU')  # Input pipeline only: never take accelerator memory.

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
FOLDER_STATS_SAMPLE = 500  # Training images whose pixels give a folder's mean and std.


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


def image_is_complete(image: tf.Tensor) -> tf.Tensor:
  """A complete JPEG or PNG (`jpeg_is_complete`, `png_is_complete`): what TFDS's image features
  and image folders hold."""
  return tf.logical_or(jpeg_is_complete(image), png_is_complete(image))


# JPEGs are decoded with libjpeg's accurate integer DCT, as Pillow decodes them (torchvision, timm,
# and `dsop_jax.deploy.predict`), so an export sees the pixels its training and evaluation saw
# wherever it runs; TensorFlow's default, the fast integer DCT, differs from it by up to 4 levels.
JPEG_DCT = 'INTEGER_ACCURATE'


def decode(image: tf.Tensor) -> tf.Tensor:
  """JPEG or PNG bytes -> H x W x 3 uint8 (grey images repeated to three channels)."""
  decoded = tf.cond(tf.io.is_jpeg(image),
                    lambda: tf.io.decode_jpeg(image, channels=3, dct_method=JPEG_DCT),
                    lambda: tf.io.decode_image(image, channels=3, expand_animations=False))
  return tf.ensure_shape(decoded, (None, None, 3))


def folder_classes(root: str, split: str) -> List[str]:
  """The class names of an ImageFolder tree: the subdirectories of ROOT/SPLIT, sorted."""
  directory = os.path.join(root, split)
  if not tf.io.gfile.isdir(directory):
    return []
  return sorted(e.rstrip('/') for e in tf.io.gfile.listdir(directory)
                if tf.io.gfile.isdir(os.path.join(directory, e)))


def _class_files(directory: str) -> Tuple[List[str], List[str]]:
  """(image files, broken entries) under a class directory, its subdirectories included (as
  torchvision's ImageFolder, following directory links once each), sorted. Broken: an image name
  that is not a readable file (a dangling link, a link loop, an unreadable file)."""
  if '://' in directory:  # An object store (gs://): no links, nothing unreadable to find.
    return sorted(os.path.join(top, n) for top, _, names in tf.io.gfile.walk(directory)
                  for n in names if n.lower().endswith(IMAGE_SUFFIXES)), []
  files, broken, seen = [], [], set()
  for top, dirs, names in os.walk(directory, followlinks=True):
    real = os.path.realpath(top)
    if real in seen:  # A link back up the tree: walked once.
      dirs[:] = []
      continue
    seen.add(real)
    dirs.sort()
    for name in names:
      if not name.lower().endswith(IMAGE_SUFFIXES):
        continue
      path = os.path.join(top, name)
      (files if os.path.isfile(path) and os.access(path, os.R_OK) else broken).append(path)
  return sorted(files), sorted(broken)


@functools.lru_cache(maxsize=8)
def folder_files(root: str, split: str, classes: Tuple[str, ...]) -> Tuple[List[str], List[int]]:
  """(paths, labels) of the JPEG and PNG files of ROOT/SPLIT/<class>/ and its subdirectories,
  sorted, labels indexing `classes` (a class missing from SPLIT has no file). Entries that cannot
  be read (`_class_files`) are left out with a warning naming them."""
  paths, labels, broken = [], [], []
  for label, name in enumerate(classes):
    directory = os.path.join(root, split, name)
    if not tf.io.gfile.isdir(directory):
      continue
    files, bad = _class_files(directory)
    paths += files
    labels += [label] * len(files)
    broken += bad
  if broken:
    logging.warning('%s: %d entr%s with an image name cannot be read and %s left out (dangling '
                    'links, link loops or unreadable files): %s%s', os.path.join(root, split),
                    len(broken), 'y' if len(broken) == 1 else 'ies',
                    'is' if len(broken) == 1 else 'are', ', '.join(broken[:5]),
                    ', ...' if len(broken) > 5 else '')
  return paths, labels


def class_counts(root: str, split: str, classes: Tuple[str, ...]) -> List[int]:
  """Image files per class of ROOT/SPLIT (`folder_files`)."""
  _, labels = folder_files(root, split, classes)
  return list(np.bincount(np.asarray(labels, np.int64), minlength=len(classes)))


@functools.lru_cache(maxsize=4)
def folder_stats(root: str, split: str, size: int
                 ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
  """Per-channel mean and standard deviation in [0, 255] of up to FOLDER_STATS_SAMPLE training
  images of a folder (a fixed, seed-0 sample; unreadable files left out), each resized to
  `size` x `size` first, as the pipeline resizes what it trains on, so that every image weighs
  the same whatever its size."""
  paths, _ = folder_files(root, split, tuple(folder_classes(root, split)))
  order = np.random.default_rng(0).permutation(len(paths))[:FOLDER_STATS_SAMPLE]
  total, total_sq, count = np.zeros(3), np.zeros(3), 0
  for i in sorted(order):
    data = tf.io.read_file(paths[i])
    if not bool(image_is_complete(data)):
      continue
    image = decode(data)
    if tuple(image.shape[:2]) != (size, size):
      image = tf.image.resize(image, (size, size), method='bilinear', antialias=True)
    pixels = image.numpy().reshape(-1, 3).astype(np.float64)
    total, total_sq, count = total + pixels.sum(0), total_sq + (pixels ** 2).sum(0), count + len(pixels)
  if not count:
    raise ValueError(f'config.data.data_dir = {root!r}: no readable JPEG or PNG image in '
                     f'{os.path.join(root, split)} to compute the normalisation from.')
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-6))
  return tuple(float(m) for m in mean), tuple(float(v) for v in std)
