"""Tiny training configs shared by the training tests and the data-parallel subprocess, and small
Fashion-MNIST IDX files."""

import gzip
import os
import sys
from typing import Any, Callable, Sequence

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dsop_jax.configs import imagenet_r18
from dsop_jax.configs import quickstart
from dsop_jax.data import datasets


# The tiny digits configs' branch layouts: `config.model.branches` (pattern, blocks).
BRANCH_LAYOUTS = {'last': ('', (0, 0, 1)), 'every': ('[1]', ()), 'none': ('', ())}


def tiny_digits_config(branches: str = 'last', **train) -> ml_collections.ConfigDict:
  """Quickstart on the real digits on one block per stage, constant learning rate, batch 64, with
  `branches`: 'last', one 1-block branch after the last stage (head a_pds3); 'every', one after
  each stage (a_pds1_1, a_pds2_1, a_pds3_1); 'none', the plain network. The branches pool 8
  channels. Its backbone widths, pooling and heads are the quickstart's; one block per stage
  compiles in about half the time of three. On a 2-core x86 CPU a training step took 0.5 s with 8
  pooled channels after each stage instead of 0.79 s with 128 (the stage-1 branch's reduction runs
  at 32x32), and a 6-step run 5.5 s instead of 10.2 s with one branch instead of three (16.6 s
  instead of 10.8 s when it compiled): the tests that need several branches ask for 'every'."""
  config = quickstart.get_config()
  config.model.stage_sizes = (1, 1, 1)
  config.model.branches.pattern, config.model.branches.blocks = BRANCH_LAYOUTS[branches]
  config.model.branches.channels = (8, 8, 8)
  config.train.batch_size = 64  # 1437 // 64 = 22 steps per epoch.
  config.train.num_epochs = 0.25  # 6 steps.
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 3
  config.optim.schedule = 'step'
  config.optim.warmup_epochs = 0.0
  config.eval.batch_size = 120
  config.train.update(train)
  return config


def tiny_model_flags(branches: str = 'last') -> list:
  """`tiny_digits_config(branches)`'s network as `dsop_jax.main` flags over configs/quickstart.py."""
  model = tiny_digits_config(branches).model
  fields = {'stage_sizes': model.stage_sizes, 'branches.pattern': model.branches.pattern,
            'branches.blocks': model.branches.blocks, 'branches.channels': model.branches.channels}
  flag = lambda v: '(' + ','.join(map(str, v)) + ')' if isinstance(v, tuple) else v  # noqa: E731
  return [f'--config.model.{name}={flag(value)}' for name, value in fields.items()]


def tiny_imagenet_config() -> ml_collections.ConfigDict:
  """ResNet-18 on one block per stage (its widths kept) with two small branches at 32x32 on
  mocked imagenet2012 (64 examples). The standard last stride (s2): XLA's CPU convolutions made
  the s1 network's stage 5 at 4x4 most of the work (a training step of 16 images took 2.0 s
  instead of 0.36 s on a 2-core x86 CPU); s1 trains at full size in configs_test."""
  config = imagenet_r18.get_config()
  config.model.last_stride = 2
  config.model.stage_sizes = (1, 1, 1, 1)
  config.data.image_size = 32
  config.data.shuffle_buffer = 64
  config.model.branches.blocks = (1, 0, 0, 1)
  config.model.branches.channels = (8, 8, 8, 8)
  config.train.batch_size = 16
  config.train.num_epochs = 0.5
  config.train.log_every_steps = 1
  config.eval.batch_size = 32
  return config


def write_fresh_export(model_config: ml_collections.ConfigDict, directory: str) -> str:
  """An export directory (real Orbax checkpoint + model_config.json) of the plain network of
  `model_config`, freshly initialised: a stand-in for another network's trained weights."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from dsop_jax.models import registry  # pylint: disable=g-import-not-at-top
  module = registry.create_backbone(model_config)
  os.makedirs(directory)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(os.path.abspath(directory), 'variables'),
                      registry.init_variables(module, jax.random.key(0),
                                             jnp.zeros((1, 32, 32, 3))))
  with open(os.path.join(directory, 'model_config.json'), 'w') as f:
    f.write(model_config.to_json())
  return directory


def write_idx(path, array):
  """`array` (uint8) as an IDX file, gzipped when `path` ends in .gz."""
  data = bytes([0, 0, 8, array.ndim]) + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  data += np.ascontiguousarray(array, np.uint8).tobytes()
  with (gzip.open if str(path).endswith('.gz') else open)(path, 'wb') as f:
    f.write(data)


def write_fashion_mnist(directory, train=40, test=12):
  """Four small IDX files in Fashion-MNIST's names (train images gzipped, as Debian ships them;
  the others plain); image i is a bright square whose size and place follow its label."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  for split, n in (('train', train), ('test', test)):
    images_name, labels_name = datasets.FASHION_MNIST_FILES[split]
    labels = np.arange(n, dtype=np.uint8) % 10
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
      image[2 + label:12 + 2 * label, 4:20] = 200 + label
    write_idx(os.path.join(directory, images_name + ('.gz' if split == 'train' else '')), images)
    write_idx(os.path.join(directory, labels_name), labels)
  return str(directory)


def birds(bad=()):
  """An `as_dataset_fn` for tfds.testing.mock_data serving caltech_birds2011: 64 real JPEGs of
  varying sizes, label i % 200, the images at `bad` truncated, its other features as it has them."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = []
  for i in range(64):
    data = tf.io.encode_jpeg(rng.integers(0, 256, (40 + i % 5, 48, 3), dtype=np.uint8)).numpy()
    images.append(data[:len(data) // 2] if i in bad else data)

  def as_dataset(self, split, **kwargs):
    del self, split, kwargs
    return tf.data.Dataset.from_tensor_slices({
        'image': images, 'label': np.arange(64) % 200, 'label_name': ['bird'] * 64,
        'bbox': np.zeros((64, 4), np.float32), 'image/filename': ['x.jpg'] * 64,
        'segmentation_mask': np.zeros((64, 4, 4, 1), np.uint8)})
  return as_dataset


def run_cli(cli: Callable[[], None], argv: Sequence[str]) -> Any:
  """Runs a command line's `cli()` (absl: it defines its flags, then `app.run`) in this process
  with `argv`, without the seconds a subprocess spends importing JAX; returns its exit code and
  removes the flags it defined, so another command line can define its own."""
  before = set(flags.FLAGS)
  saved = sys.argv
  sys.argv = list(argv)
  try:
    cli()
  except SystemExit as e:
    return e.code
  finally:
    sys.argv = saved
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)
  return None
