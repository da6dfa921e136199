"""Top-k classes of images from an export, prepared exactly as its preprocessing.json says, without
TensorFlow: images are decoded by Pillow and resized by `jax.image.resize` (the antialiased bilinear
kernel of the evaluation pipeline's `tf.image.resize`; `tests/plot_test.py` checks the two agree on
the evaluation's own images). The command line is `python -m dsop_jax.predict` (`dsop-predict`).

A file that cannot be read or decoded is reported by name and skipped. `fmt='stablehlo'` runs the
export's model.stablehlo through `jax.export` (no flax model is built), `fmt='onnx'` its model.onnx
through onnxruntime (installed apart); the default runs its Orbax variables.
"""

import json
import os
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import jax
import numpy as np
from PIL import Image

from dsop_jax import paths as paths_lib
from dsop_jax.deploy import artifact

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')


def image_paths(arguments: Sequence[str]) -> List[str]:
  """The files named, and the image files of each directory named (sorted), in order.

  Raises:
    ValueError: a directory named holds no image file, naming it and the extensions read.
  """
  paths = []
  for argument in arguments:
    if os.path.isdir(argument):
      found = [os.path.join(argument, name) for name in sorted(os.listdir(argument))
               if name.lower().endswith(IMAGE_EXTENSIONS)]
      if not found:
        raise ValueError(f'{argument}: no image file in this directory (read: '
                         f'{", ".join(IMAGE_EXTENSIONS)}; subdirectories are not searched).')
      paths.extend(found)
    else:
      paths.append(argument)
  return paths


def read_image(path: str) -> np.ndarray:
  """An H x W x 3 uint8 RGB image; ValueError naming the file when it cannot be read or decoded."""
  try:
    with Image.open(path) as image:  # An animation's first frame, as the pipeline reads it.
      return np.asarray(image.convert('RGB'), np.uint8)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    message = str(e) or type(e).__name__
    raise ValueError(f'{path}: not a readable image ({message.splitlines()[0][:200]})') from e


def load_network(export_dir: str, fmt: str = 'orbax') -> Tuple[Callable[[np.ndarray], Any],
                                                                Dict[str, Any]]:
  """(images -> logits, preprocessing recipe) of an export, run from its Orbax variables or from
  its StableHLO module or ONNX model."""
  directory = paths_lib.path(export_dir, '--export_dir')
  recipe = json.loads((directory / 'preprocessing.json').read_text())
  if fmt in ('stablehlo', 'onnx'):
    path = directory / (artifact.STABLEHLO_FILE if fmt == 'stablehlo' else artifact.ONNX_FILE)
    if not path.exists():
      raise ValueError(f'{export_dir!r} has no {path.name}: export it with '
                       f'--format=orbax,{fmt}.')
  if fmt == 'onnx':
    import onnxruntime  # pylint: disable=g-import-not-at-top  (optional package)
    session = onnxruntime.InferenceSession(path.read_bytes(), providers=['CPUExecutionProvider'])
    return lambda x: session.run(None, {'images': np.asarray(x, np.float32)})[0], recipe
  if fmt == 'stablehlo':
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
    return exported.call, recipe
  module, variables = artifact.load(export_dir)
  return jax.jit(lambda x: module.apply(variables, x, train=False)[0]), recipe


def predict(export_dir: str, paths: Sequence[str], top_k: int = 5, fmt: str = 'orbax'
            ) -> Tuple[List[Dict[str, Any]], List[str]]:
  """([{'path', 'top': [{'class', 'index', 'probability'}, ...]}, ...], [error per unreadable
  file]) for the images at `paths`, one at a time."""
  network, recipe = load_network(export_dir, fmt)
  names = recipe.get('class_names')
  results, errors = [], []
  for path in paths:
    try:
      image = read_image(path)
    except ValueError as e:
      errors.append(str(e))
      continue
    logits = np.asarray(network(prepare_image(image, recipe)[None]))[0]
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    top = np.argsort(-probabilities, kind='stable')[:top_k]
    results.append({'path': path, 'top': [
        {'class': names[i] if names else str(i), 'index': int(i),
         'probability': float(probabilities[i])} for i in top]})
  return results, errors


def _resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """H x W x C pixels -> size[0] x size[1] x C float32, antialiased bilinear (as
  `tf.image.resize(..., 'bilinear', antialias=True)`)."""
  return np.asarray(jax.image.resize(np.asarray(image, np.float32),
                                     (int(size[0]), int(size[1]), image.shape[-1]),
                                     method='bilinear', antialias=True))


def _rounded(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def prepare_image(image: np.ndarray, recipe: Mapping[str, Any]) -> np.ndarray:
  """An H x W x 3 uint8 RGB image -> the network's float32 input, following `recipe`
  (preprocessing.json), with the evaluation pipeline's operations: resized pixels are rounded, as
  the evaluation sends them to the device."""
  size = recipe['input_size'][0]
  resize = recipe['resize']
  if recipe.get('grey'):  # ITU-R 601 luma, which leaves a grey image's value as it is.
    image = np.round(np.asarray(image, np.float64) @ np.array([0.299, 0.587, 0.114]))
    image = np.clip(image, 0, 255).astype(np.uint8)[..., None]
  x = np.asarray(image)
  if resize['rule'] == 'shorter_side_then_center_crop':
    shape = np.array(x.shape[:2], np.float32)  # The pipeline's float32 arithmetic.
    new = np.ceil(shape * (np.float32(resize['shorter_side']) / shape.min())).astype(int)
    x = _resize(x, new)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    x = x[top:top + size, left:left + size]
  elif resize['rule'].startswith('grey_28_then_'):
    x = _rounded(_resize(x, resize['source_size']))
    if resize['rule'].endswith('_pad'):  # Zeros around the image, as `datasets.fit_grey`.
      h, w = x.shape[:2]
      top, left = (size - h) // 2, (size - w) // 2
      x = np.pad(x, ((top, size - h - top), (left, size - w - left), (0, 0)))
    else:
      x = _resize(x, (size, size))
  elif tuple(x.shape[:2]) != (size, size):
    x = _resize(x, (size, size))
  x = np.round(np.asarray(x, np.float32))
  if x.shape[-1] == 1:
    x = np.tile(x, (1, 1, 3))
  return ((x - np.asarray(recipe['mean'], np.float32)) / np.asarray(recipe['std'], np.float32)
          ).astype(np.float32)
