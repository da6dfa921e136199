"""Input pipelines on the real digits and on TFDS mock data: shapes and normalisation, determinism and
exact resume, per-process shards that split the data, padded eval batches that cover it once."""

import itertools
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import imagenet_r18
from configs import quickstart
from dsop_jax import input_pipeline as ip

METADATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tfds_metadata')


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def test_digits_batches_shapes_and_normalisation():
  config = quickstart.get_config()
  assert ip.num_examples(config, 'train') == 1437 and ip.num_examples(config, 'test') == 360
  (batch,) = _take(ip.train_batches(config, local_batch_size=64, start_step=0, seed=0), 1)
  assert batch['image'].shape == (64, 32, 32, 3) and batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32 and set(batch['label']) <= set(range(10))
  assert abs(float(batch['image'].mean())) < 0.2 and 0.8 < float(batch['image'].std()) < 1.2


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


def test_process_shards_are_disjoint_and_eval_covers_everything_once():
  config = quickstart.get_config()
  labels = []
  for index in range(2):
    batches = list(ip.eval_batches(config, local_batch_size=50, process_index=index,
                                   process_count=2))
    assert len(batches) == ip.eval_steps(config, 100, process_count=2) == 4
    labels.append(np.concatenate([b['label'][b['mask']] for b in batches]))
  assert sum(len(x) for x in labels) == 360
  _, test_labels = ip._digits_arrays()['test']  # pylint: disable=protected-access
  assert sorted(np.concatenate(labels)) == sorted(test_labels)


@pytest.mark.parametrize('inception', [False, True])
def test_imagenet_mock_pipeline(inception):
  config = imagenet_r18.get_config()
  config.data.image_size = 64
  config.data.inception_crop = inception
  with tfds.testing.mock_data(num_examples=64, data_dir=METADATA):
    ip.check_prepared(config)
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
    ip.dataset_info(config)
