"""Writes the TFDS metadata (dataset_info.json, label files) that tfds.testing.mock_data needs to serve
imagenet2012, cifar10, cifar100 and caltech_birds2011 (CUB-200-2011: the fine-tuning recipes, and
a dataset read by its TFDS name) with real split names and small split sizes, without any download.

  python tests/make_tfds_metadata.py   # rewrites dsop_jax/data/tfds-metadata/ (datasets.MOCK_METADATA)
"""

import os

import tensorflow_datasets as tfds

from dsop_jax.data import datasets

OUT = datasets.MOCK_METADATA
SPLITS = {'imagenet2012': {'train': 64, 'validation': 64},
          'cifar10': {'train': 64, 'test': 64}, 'cifar100': {'train': 64, 'test': 64},
          'caltech_birds2011': {'train': 64, 'test': 64}}


def main() -> None:
  for name, splits in SPLITS.items():
    builder = tfds.builder(name, data_dir=OUT)
    info = builder.info
    info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0)
        for split, n in splits.items()]))
    os.makedirs(builder.data_dir, exist_ok=True)
    info.write_to_directory(builder.data_dir)
    print(builder.data_dir)


if __name__ == '__main__':
  main()
