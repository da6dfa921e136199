"""`python -m dsop_jax.benchmark --config=configs/NAME.py [--quick] [--parts=...] [--json]`
(`dsop-benchmark`): training, inference, pooling and input throughput (`dsop_jax.tools.benchmark`).
"""

import dataclasses
import json
from typing import Any, Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from dsop_jax.tools import benchmark


def _define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'Model config file.', lock_config=False)
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of tables.')
  flags.DEFINE_bool('quick', False, f'Small settings for a smoke run: {benchmark.QUICK}.')
  flags.DEFINE_string('parts', ','.join(benchmark.Options.parts), f'Subset of {",".join(benchmark.PARTS)}.')
  for field in dataclasses.fields(benchmark.Options):
    if field.type in (int, 'int'):
      quick = benchmark.QUICK.get(field.name, field.default)
      flags.DEFINE_integer(field.name, None, f'Default: {field.default} (with --quick: {quick}).')
  flags.DEFINE_enum('precision', None, benchmark.PRECISIONS, "Default: the config's model.dtype.")


def options_from_flags(values: Any = flags.FLAGS) -> benchmark.Options:
  """benchmark.Options from the command line: --quick defaults, then every flag given explicitly."""
  options = dict(benchmark.QUICK) if values.quick else {}
  options.update({f.name: values[f.name].value for f in dataclasses.fields(benchmark.Options)
                  if f.type in (int, 'int') and values[f.name].value is not None})
  config = values.config
  options['precision'] = values.precision or (config.model.dtype if config else 'float32')
  options['parts'] = tuple(p.strip() for p in values.parts.split(',') if p.strip())
  if values.quick and 'image_size' not in options and config is not None:
    options['image_size'] = min(config.data.image_size, 64)
  return benchmark.Options(**options)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  result = benchmark.run(flags.FLAGS.config, options_from_flags())
  print(json.dumps(result) if flags.FLAGS.json else benchmark.format_report(result))


def cli() -> None:
  """The `python -m dsop_jax.benchmark` command line (`dsop-benchmark`); its flags are defined
  here, so importing the module defines none."""
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  cli()
