"""predict without TensorFlow: Pillow decodes what TensorFlow decodes, and `prepare_image` gives the
evaluation pipeline's input (tf.data, `input_pipeline.preprocess`) up to one grey level in a few
pixels per thousand, for every resize rule an export's preprocessing.json can name; files that
cannot be read are named. (The end-to-end command, in its three formats, is tested on a trained
export in plot_test.py.)"""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from dsop_jax.data import datasets
from dsop_jax.data import image_files
from dsop_jax.data import input_pipeline
from dsop_jax.deploy import predict

IMAGENET = datasets.DATASETS['imagenet2012']


def _pipeline(image: np.ndarray, info: datasets.DatasetInfo, size: int) -> np.ndarray:
  """The evaluation pipeline's uint8 image, normalised as the device normalises it."""
  out = input_pipeline.preprocess({'image': tf.constant(image), 'label': tf.constant(0)},
                                  tf.constant([0, 0]), info=info, train=False, image_size=size)
  return (out['image'].numpy().astype(np.float32) - np.float32(info.mean)) / np.float32(info.std)


@pytest.mark.parametrize('shape', [(375, 500), (500, 333), (300, 300), (8, 8), (37, 91)])
@pytest.mark.parametrize('augment, size', [('imagenet', 224), ('finegrained', 64), ('small', 32)])
def test_prepare_image_gives_the_evaluation_pipelines_input(shape, augment, size):
  info = datasets.DatasetInfo(10, 'train', 'validation', augment, IMAGENET.mean, IMAGENET.std)
  image = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), dtype=np.uint8)
  recipe = {'input_size': [size, size], 'mean': list(info.mean), 'std': list(info.std)}
  if augment == 'small':
    recipe['resize'] = {'rule': 'resize'}
  else:
    recipe['resize'] = {'rule': 'shorter_side_then_center_crop',
                        'shorter_side': input_pipeline.eval_shorter_side(augment, size)}
  expected, got = _pipeline(image, info, size), predict.prepare_image(image, recipe)
  assert got.shape == expected.shape == (size, size, 3) and got.dtype == np.float32
  level = 1 / min(info.std)  # One grey level, normalised.
  differ = np.abs(got - expected) > 1e-5
  assert np.abs(got - expected).max() <= level * 1.001
  assert differ.mean() < 0.01, differ.mean()  # Rounding at .5: a few pixels per thousand.


def test_grey_28_pixel_recipes_follow_fashion_mnists_pipeline():
  """Fashion-MNIST's recipes: any image -> grey, 28x28, then padded or resized to the input."""
  image = np.random.default_rng(1).integers(0, 256, (28, 28, 3), dtype=np.uint8)
  grey = np.round(image.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
  for fit in datasets.FITS:
    recipe = {'input_size': [32, 32], 'mean': [72.9] * 3, 'std': [90.0] * 3, 'grey': True,
              'resize': {'rule': f'grey_28_then_{fit}', 'source_size': [28, 28]}}
    expected = datasets.fit_grey(grey[None], 32, fit)[0].astype(np.float32)
    got = predict.prepare_image(image, recipe)
    np.testing.assert_allclose(got[..., 0] * 90.0 + 72.9, expected, atol=1.001)
    assert (np.abs(got[..., 0] * 90.0 + 72.9 - expected) > 1e-3).mean() < 0.01
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


@pytest.mark.parametrize('form', ['PNG', 'JPEG', 'GIF', 'BMP'])
def test_pillow_decodes_what_the_pipeline_decodes(tmp_path, form):
  """Bit for bit: JPEGs with libjpeg's accurate DCT on both sides (`image_files.JPEG_DCT`)."""
  image = np.random.default_rng(2).integers(0, 256, (31, 45, 3), dtype=np.uint8)
  path = tmp_path / f'image.{form.lower()}'
  Image.fromarray(image).save(path, format=form, **({'quality': 90} if form == 'JPEG' else {}))
  ours = predict.read_image(str(path))
  theirs = image_files.decode(tf.constant(path.read_bytes())).numpy()
  assert ours.shape == theirs.shape == (31, 45, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours, theirs)
  grey = io.BytesIO()
  Image.fromarray(image[..., 0]).save(grey, format='PNG')
  (tmp_path / 'grey.png').write_bytes(grey.getvalue())
  np.testing.assert_array_equal(predict.read_image(str(tmp_path / 'grey.png')),
                                np.repeat(image[..., :1], 3, axis=-1))


def test_unreadable_files_are_named(tmp_path):
  (tmp_path / 'cut.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 10)
  (tmp_path / 'notes.jpg').write_text('not an image')
  for name in ('cut.png', 'notes.jpg', 'missing.png'):
    with pytest.raises(ValueError, match=f'{name}: not a readable image'):
      predict.read_image(str(tmp_path / name))
