"""Top-k classes of images from an export, prepared exactly as its preprocessing.json says.

  python -m dsop_jax.predict --export_dir=OUT image1.jpg photos/ [--top_k=5] [--json]
      [--format=orbax|stablehlo|onnx]

Directories are searched (not recursively) for JPEG, PNG, GIF and BMP files. Each image prints one
line, `PATH: name 0.934, name 0.021, ...` (or with --json one object per image: path, top-k
classes with probabilities). A file that cannot be read or decoded is reported by name on stderr
and skipped; the exit code is 1 when any was, else 0. `--format=stablehlo` runs the export's
model.stablehlo through `jax.export` (no flax model is built), `--format=onnx` its model.onnx
through onnxruntime (installed apart); the default runs its Orbax variables.
"""

import json
import os
import sys
from typing import Any, Callable, Dict, List, Sequence, Tuple

from absl import app
from absl import flags
import jax
import numpy as np
import tensorflow as tf

from dsop_jax import checkpointing
from dsop_jax import export
from dsop_jax import input_pipeline
from dsop_jax import paths as paths_lib

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
    with open(path, 'rb') as f:
      data = f.read()
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
  except (OSError, tf.errors.OpError) as e:
    message = e.message if isinstance(e, tf.errors.OpError) else str(e)
    raise ValueError(f'{path}: not a readable image ({message.splitlines()[0][:200]})') from e
  return image.numpy()


def load_network(export_dir: str, fmt: str = 'orbax') -> Tuple[Callable[[np.ndarray], Any],
                                                                Dict[str, Any]]:
  """(images -> logits, preprocessing recipe) of an export, run from its Orbax variables or from
  its StableHLO module or ONNX model."""
  directory = paths_lib.path(export_dir, '--export_dir')
  recipe = json.loads((directory / 'preprocessing.json').read_text())
  if fmt in ('stablehlo', 'onnx'):
    path = directory / (export.STABLEHLO_FILE if fmt == 'stablehlo' else export.ONNX_FILE)
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
  module, variables = export.load(export_dir)
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
    logits = np.asarray(network(input_pipeline.prepare_image(image, recipe)[None]))[0]
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    top = np.argsort(-probabilities, kind='stable')[:top_k]
    results.append({'path': path, 'top': [
        {'class': names[i] if names else str(i), 'index': int(i),
         'probability': float(probabilities[i])} for i in top]})
  return results, errors


def main(argv: Sequence[str]) -> None:
  checkpointing.quiet_orbax_info_logs()
  if len(argv) < 2:
    raise app.UsageError('Give one or more image files or directories.')
  if flags.FLAGS.top_k < 1:
    raise app.UsageError(f'--top_k={flags.FLAGS.top_k} is invalid: must be >= 1.')
  try:
    images = image_paths(argv[1:])
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  results, errors = predict(flags.FLAGS.export_dir, images, flags.FLAGS.top_k,
                            flags.FLAGS.format)
  for result in results:
    if flags.FLAGS.json:
      print(json.dumps(result))
    else:
      print(f'{result["path"]}: ' + ', '.join(f'{t["class"]} {t["probability"]:.3f}'
                                              for t in result['top']))
  for error in errors:
    print(error, file=sys.stderr)
  if errors:
    sys.exit(1)


def cli() -> None:
  """The `python -m dsop_jax.predict` command line (`dsop-predict`); its flags are defined here."""
  flags.DEFINE_string('export_dir', None, 'An export directory (`python -m dsop_jax.export`).')
  flags.DEFINE_integer('top_k', 5, 'Classes shown per image.')
  flags.DEFINE_bool('json', False, 'One JSON object per image instead of a line of text.')
  flags.DEFINE_enum('format', 'orbax', ['orbax', 'stablehlo', 'onnx'],
                    'Which form of the export to run.')
  flags.mark_flags_as_required(['export_dir'])
  app.run(main)


if __name__ == '__main__':
  cli()
