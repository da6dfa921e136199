"""`python -m dsop_jax.gradients --workdir=DIR [--init] [--batches=4] [--batch_size=128] [--json]`
(`dsop-gradients`): where each head's gradient goes in the backbone (`dsop_jax.tools.gradients`).
"""

import json
from typing import Any

from absl import app
from absl import flags

from dsop_jax.data import input_pipeline
from dsop_jax.deploy import artifact
from dsop_jax.models import registry
from dsop_jax.tools import gradients
from dsop_jax.training import runs


def main(argv: Any) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  artifact.quiet_orbax_info_logs()
  config = runs.workdir_config(flags.FLAGS.workdir)
  registry.validate_model_config(config.model)
  registry.validate_loss_config(config)
  input_pipeline.validate_data_config(config)
  if flags.FLAGS.batches < 1 or flags.FLAGS.batch_size < 1:
    raise app.UsageError('--batches and --batch_size must be >= 1.')
  result = gradients.measure(config, flags.FLAGS.workdir, init=flags.FLAGS.init,
                   num_batches=flags.FLAGS.batches, batch_size=flags.FLAGS.batch_size)
  print(json.dumps(result) if flags.FLAGS.json else gradients.format_table(result))


def cli() -> None:
  """The `python -m dsop_jax.gradients` command line; its flags are defined here."""
  flags.DEFINE_string('workdir', None, 'A training workdir (its config.json and checkpoints).')
  flags.DEFINE_bool('init', False, 'Measure a fresh initialisation of the config instead.')
  flags.DEFINE_integer('batches', 4, 'Training batches the gradients are averaged over.')
  flags.DEFINE_integer('batch_size', 128, 'Examples per batch.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of the tables.')
  flags.mark_flags_as_required(['workdir'])
  app.run(main)


if __name__ == '__main__':
  cli()
