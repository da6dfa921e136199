"""`python -m dsop_jax.predict --export_dir=OUT image1.jpg photos/ [--top_k=5] [--json]
[--format=orbax|stablehlo|onnx]` (`dsop-predict`): top-k classes of images from an export
(`dsop_jax.deploy.predict`).

Directories are searched (not recursively) for JPEG, PNG, GIF and BMP files. Each image prints one
line, `PATH: name 0.934, name 0.021, ...` (or with --json one object per image: path, top-k
classes with probabilities). A file that cannot be read or decoded is reported by name on stderr
and skipped; the exit code is 1 when any was, else 0. It imports neither TensorFlow nor the
training stack.
"""

import json
import sys
from typing import Sequence

from absl import app
from absl import flags

from dsop_jax.deploy import artifact
from dsop_jax.deploy import predict


def main(argv: Sequence[str]) -> None:
  artifact.quiet_orbax_info_logs()
  if len(argv) < 2:
    raise app.UsageError('Give one or more image files or directories.')
  if flags.FLAGS.top_k < 1:
    raise app.UsageError(f'--top_k={flags.FLAGS.top_k} is invalid: must be >= 1.')
  try:
    images = predict.image_paths(argv[1:])
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  results, errors = predict.predict(flags.FLAGS.export_dir, images, flags.FLAGS.top_k,
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
