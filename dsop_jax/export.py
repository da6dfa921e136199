"""`python -m dsop_jax.export --workdir=DIR --output_dir=OUT [--format=orbax,stablehlo,onnx,torchvision]`
(`dsop-export`): writes a training run's detached first-order network
(`dsop_jax.training.export.export`, where the formats are described).
"""

from typing import Any

from absl import app
from absl import flags

from dsop_jax.deploy import artifact
from dsop_jax.models import registry
from dsop_jax.training import export
from dsop_jax.training import runs


def _main(argv: Any) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  artifact.quiet_orbax_info_logs()
  workdir = flags.FLAGS.workdir
  out = export.export(workdir, flags.FLAGS.output_dir, overwrite=flags.FLAGS.overwrite,
               step=flags.FLAGS.step, best=flags.FLAGS.best, formats=flags.FLAGS.format,
               ema=flags.FLAGS.ema)
  second = registry.head_spec(runs.workdir_config(workdir).model) is not None
  print(f'Exported the detached {"second" if second else "first"}-order network to {out}')


def cli() -> None:
  """The `python -m dsop_jax.export` command line (`dsop-export`). Its flags are defined here, not
  at import, as `dsop_jax.main` (which imports this module) has a --workdir of its own."""
  flags.DEFINE_string('workdir', None, 'Training workdir (its latest checkpoint is exported).')
  flags.DEFINE_string('output_dir', None, 'Directory for the exported plain network.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing export in --output_dir.')
  flags.DEFINE_list('format', ['orbax'], 'What to write besides the Orbax variables, '
                    'preprocessing.json and model_card.json (always written): orbax, stablehlo, '
                    'onnx, torchvision (a torchvision/timm state dict as safetensors).')
  flags.DEFINE_bool('ema', False, 'Export the moving average of the weights '
                    '(config.optim.ema_decay) instead of the weights.')
  flags.DEFINE_integer('step', None, 'Export the checkpoint of this step instead of the latest.')
  flags.DEFINE_bool('best', False, 'Export the checkpoint saved with the best main-head eval top-1 '
                    '(config.train.keep_best keeps it).')
  flags.mark_flags_as_required(['workdir', 'output_dir'])
  flags.register_multi_flags_validator(
      ['step', 'best'], lambda f: f['step'] is None or not f['best'],
      message='--step and --best choose the checkpoint two ways: give one.')
  app.run(_main)


if __name__ == '__main__':
  cli()
