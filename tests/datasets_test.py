"""A user's own data: an image folder (the digits written as PNG and JPEG files, one damaged) trains
end to end, its class names and normalisation travelling with the run into its export; a TFDS
dataset read by its name (caltech_birds2011 on TFDS mock data) yields its own features and splits;
malformed folders and unknown names are refused naming the field."""

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dsop_jax.data import datasets
from dsop_jax.data import image_files
from dsop_jax.data import input_pipeline
from dsop_jax.training import export
from dsop_jax.training import train
from tests import train_helpers

NAMES = ['eight', 'five', 'four', 'nine', 'one', 'seven', 'six', 'three', 'two', 'zero']
DIGIT_NAMES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']


def _write_folder(root, per_class=(12, 4)):
  """ROOT/train and ROOT/val of the real digits, class directories named by the digit's word (so
  the sorted order is not the digit order), PNG and JPEG files, one truncated PNG in train."""
  arrays = datasets._digits_arrays()
  for split, (name, count) in zip(('train', 'test'), (('train', per_class[0]), ('val', per_class[1]))):
    images, labels = arrays[split]
    for digit, word in enumerate(DIGIT_NAMES):
      directory = os.path.join(root, name, word)
      os.makedirs(directory)
      for i, image in enumerate(images[labels == digit][:count]):
        if i % 3 == 2:
          data, suffix = tf.io.encode_jpeg(image, quality=95).numpy(), '.JPG'
        else:
          data, suffix = tf.io.encode_png(image).numpy(), '.png'
        with open(os.path.join(directory, f'{i}{suffix}'), 'wb') as f:
          f.write(data)
  with open(os.path.join(root, 'train', 'zero', 'notes.txt'), 'w') as f:
    f.write('not an image: ignored')
  good = os.path.join(root, 'train', 'one', '0.png')
  with open(good, 'rb') as f, open(os.path.join(root, 'train', 'one', 'cut.png'), 'wb') as g:
    g.write(f.read()[:50])
  return str(root)


def _folder_config(root):
  config = train_helpers.tiny_digits_config('none', num_epochs=2 / 1)  # 121 images: 1 step/epoch.
  config.data.update(dataset='folder', data_dir=root, augment='small', shuffle_buffer=128)
  return config


def test_an_image_folder_trains_and_its_class_names_and_statistics_travel_with_the_run(tmp_path):
  root = _write_folder(tmp_path / 'photos')
  config = _folder_config(root)
  input_pipeline.validate_data_config(config)
  assert datasets.class_names(config) == NAMES  # Sorted by name, as torchvision's ImageFolder.
  assert datasets.num_examples(config, 'train') == 121 and datasets.num_examples(config, 'val') == 40
  # The pipeline's labels index the sorted names; the damaged file is skipped and counted.
  skipped = datasets.SkipCounter()
  (batch,) = [next(input_pipeline.train_batches(config, local_batch_size=120, start_step=0, seed=0,
                                                skipped=skipped))]
  assert skipped.value == 1 and batch['image'].shape == (120, 32, 32, 3)  # Counted once.
  counts = np.bincount(batch['label'], minlength=10)
  assert list(counts) == [12] * 10  # 'one' has 12 good files and the damaged one.
  # Normalised by the statistics of its own (readable) training images.
  pixels = np.concatenate([image_files.decode(tf.io.read_file(p)).numpy().reshape(-1, 3)
                           for p in image_files.folder_files(root, 'train', tuple(NAMES))[0]
                           if not p.endswith('cut.png')]).astype(np.float64)
  info = datasets.dataset_info(config)
  np.testing.assert_allclose(info.mean, pixels.mean(0), rtol=1e-6)
  np.testing.assert_allclose(info.std, pixels.std(0), rtol=1e-5)

  workdir = str(tmp_path / 'run')
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 2
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)['data']
  np.testing.assert_allclose(saved['mean'], info.mean)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    record = json.loads(f.readlines()[-1])
  assert 0 <= record['eval']['logits']['top1'] <= 1
  shutil.rmtree(root)  # The data is gone; its class names and statistics are not.
  out = export.export(workdir, str(tmp_path / 'export'))
  with open(os.path.join(out, 'preprocessing.json')) as f:
    recipe = json.load(f)
  assert recipe['class_names'] == NAMES
  np.testing.assert_allclose(recipe['mean'], info.mean)
  assert recipe['resize']['rule'] == 'resize'

  # Evaluating the export checks it against the data: the digits (classes '0'..'9', not the
  # words), a folder of 3 classes, a folder whose classes are other words are refused naming both.
  digits = train_helpers.tiny_digits_config('none')
  with pytest.raises(ValueError, match=r"--export_dir=.* was trained on other classes than "
                                       r"config.data.dataset = 'digits' has: label 0 is 'eight' in "
                                       r"the export, '0' in the data"):
    train.evaluate_checkpoint(digits, workdir, export_dir=out)
  three = _write_folder(tmp_path / 'three', per_class=(2, 1))
  for word in DIGIT_NAMES[3:]:
    for split in ('train', 'val'):
      shutil.rmtree(os.path.join(three, split, word))
  with pytest.raises(ValueError, match=r'is a network of 10 classes and config.data.dataset = '
                                       r"'folder' has 3: evaluate an export on the data"):
    train.evaluate_checkpoint(_folder_config(three), workdir, export_dir=out)
  renamed = _write_folder(tmp_path / 'renamed', per_class=(2, 1))
  for split in ('train', 'val'):
    os.rename(os.path.join(renamed, split, 'zero'), os.path.join(renamed, split, 'nought'))
  with pytest.raises(ValueError, match=r"label 4 is 'one' in the export, 'nought' in the data"):
    train.evaluate_checkpoint(_folder_config(renamed), workdir, export_dir=out)
  # The same classes: evaluated with the export's statistics, whatever the config says.
  again = _folder_config(_write_folder(tmp_path / 'again'))
  scored = train.evaluate_checkpoint(again, workdir, export_dir=out)['logits']
  again.data.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  assert train.evaluate_checkpoint(again, workdir, export_dir=out)['logits'] == scored


def _png(path, value, size=8):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = np.full((size, size, 3), value, np.uint8)
  with open(path, 'wb') as f:
    f.write(tf.io.encode_png(image).numpy())


def test_a_folder_is_read_as_imagefolder_reads_it(tmp_path, caplog):
  """Images in a class's subdirectories count (a directory named x.png too); dangling links and
  link loops are left out, named, before anything reads the data, and training goes on; a class
  without images and a one-class folder are refused; the statistics weigh every image the same,
  whatever its size (one 256 x 256 image among ten 8 x 8 ones)."""
  root = str(tmp_path / 'photos')
  for i in range(10):
    _png(os.path.join(root, 'train', 'ant', f'{i}.png'), 10)
  _png(os.path.join(root, 'train', 'bee', 'big.png'), 250, size=256)
  _png(os.path.join(root, 'train', 'bee', 'wings', 'deep', 'a.png'), 250)
  _png(os.path.join(root, 'train', 'bee', 'x.png', 'inside.png'), 250)
  os.symlink(os.path.join(root, 'nowhere.png'), os.path.join(root, 'train', 'ant', 'dangling.png'))
  os.symlink('loop.png', os.path.join(root, 'train', 'ant', 'loop.png'))
  os.symlink('..', os.path.join(root, 'train', 'bee', 'wings', 'up'))  # A directory loop.
  for name in ('ant', 'bee'):
    _png(os.path.join(root, 'val', name, '0.png'), 10)
  config = _folder_config(root)
  config.model.num_classes = 2
  with caplog.at_level(logging.WARNING):
    input_pipeline.validate_data_config(config)
  assert re.search(r'2 entries with an image name cannot be read and are left out .*'
                   r'ant/dangling.png, .*ant/loop.png', caplog.text)
  paths, labels = image_files.folder_files(root, 'train', ('ant', 'bee'))
  assert labels == [0] * 10 + [1] * 3 and paths[-2:] == [
      os.path.join(root, 'train', 'bee', 'wings', 'deep', 'a.png'),
      os.path.join(root, 'train', 'bee', 'x.png', 'inside.png')]
  batch = next(input_pipeline.train_batches(config, local_batch_size=13, start_step=0, seed=0))
  assert sorted(batch['label']) == [0] * 10 + [1] * 3
  mean, _ = datasets.dataset_info(config).mean, datasets.dataset_info(config).std
  np.testing.assert_allclose(mean, [(10 * 10 + 3 * 250) / 13] * 3, rtol=1e-6)
  os.makedirs(os.path.join(root, 'train', 'cat'))
  config.model.num_classes = 3
  with pytest.raises(ValueError, match=r"the class directory \['cat'\] in .*photos/train holds no "
                                       r'.jpg, .jpeg or .png file'):
    input_pipeline.validate_data_config(config)
  one = str(tmp_path / 'one')
  for split in ('train', 'val'):
    _png(os.path.join(one, split, 'ant', '0.png'), 10)
  config = _folder_config(one)
  config.model.num_classes = 1
  with pytest.raises(ValueError, match=r"has one class directory \('ant'\); a classifier needs at "
                                       'least two classes'):
    input_pipeline.validate_data_config(config)


def test_a_resume_on_a_folder_of_other_classes_is_refused_naming_them(tmp_path):
  """Trained on classes [b, c, z]; rerun on a folder of [a, b, c] (same pixels, so the same
  statistics): refused naming both lists, class_names.json untouched; the same classes resume."""
  roots = {names: str(tmp_path / names) for names in ('bcz', 'abc')}
  for names, root in roots.items():
    for label, name in enumerate(names):
      for split in ('train', 'val'):
        for i in range(4):
          _png(os.path.join(root, split, name, f'{i}.png'), 40 * i + label)
  first = _folder_config(roots['bcz'])
  first.model.num_classes, first.train.batch_size, first.train.num_epochs = 3, 12, 1.0
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(first, workdir)
  recorded = open(os.path.join(workdir, 'class_names.json')).read()
  assert json.loads(recorded) == ['b', 'c', 'z']
  other = _folder_config(roots['abc'])
  other.model.num_classes, other.train.batch_size, other.train.num_epochs = 3, 12, 2.0
  with pytest.raises(ValueError, match=r"was trained on the classes \['b', 'c', 'z'\] \(label "
                                       r"order\) and config.data \('folder' at '.*abc'\) has "
                                       r"\['a', 'b', 'c'\]: resuming would give its labels other "
                                       'meanings'):
    train.train_and_evaluate(other, workdir)
  assert open(os.path.join(workdir, 'class_names.json')).read() == recorded
  first.train.num_epochs = 2.0
  assert int(train.train_and_evaluate(first, workdir).step) == 2


def test_malformed_folders_are_refused_naming_the_field(tmp_path):
  config = _folder_config(str(tmp_path / 'nothing'))
  with pytest.raises(ValueError, match=r"config.data.data_dir = '.*nothing' is invalid for dataset "
                                       r'folder: no class directory in .*nothing/train; expected '):
    input_pipeline.validate_data_config(config)
  root = _write_folder(tmp_path / 'photos', per_class=(2, 1))
  os.makedirs(os.path.join(root, 'val', 'eleven'))
  config = _folder_config(root)
  with pytest.raises(ValueError, match=r"the 'val' split has classes the 'train' split lacks: "
                                       r"\['eleven'\]"):
    input_pipeline.validate_data_config(config)
  os.rmdir(os.path.join(root, 'val', 'eleven'))
  config.model.num_classes = 12
  with pytest.raises(ValueError, match='config.model.num_classes = 12 is invalid: folder has 10 '
                                       'classes'):
    input_pipeline.validate_data_config(config)
  config.model.num_classes = 10
  config.data.update(mean=(1.0, 2.0), std=(1.0, 1.0, 1.0))
  with pytest.raises(ValueError, match=r'config.data.mean = \(1.0, 2.0\), config.data.std = '):
    input_pipeline.validate_data_config(config)
  config.data.update(mean=(), std=(), augment='autoaugment')
  with pytest.raises(ValueError, match="config.data.augment = 'autoaugment' is invalid: allowed: "
                                       'imagenet, finegrained, cifar, small'):
    input_pipeline.validate_data_config(config)


def test_a_tfds_dataset_by_name_is_read_with_its_own_features_and_splits():
  """caltech_birds2011 on TFDS mock data: its 'image' (not its segmentation mask, also an Image)
  and 'label' features, 200 classes, its splits; JPEGs of varying sizes decoded and cropped, the
  truncated one skipped. (It trains end to end in pretrained_test, from torchvision weights.)"""
  config = train_helpers.tiny_digits_config('none')
  config.data.update(dataset='caltech_birds2011', shuffle_buffer=64)
  config.model.num_classes = 200
  with tfds.testing.mock_data(num_examples=64, data_dir=datasets.MOCK_METADATA,
                              as_dataset_fn=train_helpers.birds(bad={5})):
    input_pipeline.validate_data_config(config)
    info = datasets.dataset_info(config)
    assert (info.num_classes, info.train_split, info.eval_split, info.augment) == (
        200, 'train', 'test', 'imagenet')
    skipped = datasets.SkipCounter()
    batch = next(input_pipeline.train_batches(config, local_batch_size=63, start_step=0, seed=0,
                                              skipped=skipped))
    assert batch['image'].shape == (63, 32, 32, 3) and 5 not in batch['label']
    assert skipped.value == 1
    config.data.eval_split = 'validation'
    with pytest.raises(ValueError, match=r"config.data.eval_split: config.data.dataset = "
                                         r"'caltech_birds2011' .* has no 'validation' split \(has "
                                         r"\['test', 'train'\]\)"):
      input_pipeline.validate_data_config(config)
  config.data.dataset = 'not_a_tfds_dataset'
  with pytest.raises(ValueError, match="config.data.dataset = 'not_a_tfds_dataset' is invalid: "
                                       'allowed: imagenet2012, .*folder .*TFDS image-classification'):
    input_pipeline.validate_data_config(config)
