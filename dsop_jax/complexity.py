"""`python -m dsop_jax.complexity --config=configs/NAME.py [--json]` (`dsop-complexity`):
parameters and multiply-accumulates of the network and its branches (`dsop_jax.tools.complexity`).
"""

import json
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

from dsop_jax.models import registry
from dsop_jax.tools import complexity


def main(argv: Any) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  registry.validate_model_config(flags.FLAGS.config.model)
  rep = complexity.report(flags.FLAGS.config)
  print(json.dumps(rep) if flags.FLAGS.json else complexity.format_table(rep))


def cli() -> None:
  """The `python -m dsop_jax.complexity` command line (`dsop-complexity`); its flags are defined
  here, so importing the module defines none."""
  config_flags.DEFINE_config_file('config', None, 'Model config file.', lock_config=True)
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.mark_flags_as_required(['config'])
  app.run(main)


if __name__ == '__main__':
  cli()
