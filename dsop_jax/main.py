"""Entry point: `python -m dsop_jax.main --config=configs/<name>.py --workdir=DIR [--mode=eval]`.

Training resumes from DIR when it holds a checkpoint. `--mode=eval` evaluates the latest checkpoint in
DIR (every head; `--step=N` or `--best` for another), or with `--export_dir` an exported first-order
network (main head only).
Multi-host: pass `--distributed` (jax.distributed.initialize() reads the cluster environment: SLURM,
Cloud TPU, ...), or give --coordinator_address/--num_processes/--process_id explicitly.
"""

import json

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from dsop_jax.deploy import artifact
from dsop_jax.training import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, summaries, metrics.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Train (and evaluate) or evaluate.')
_EXPORT_DIR = flags.DEFINE_string('export_dir', None, '--mode=eval: evaluate this export instead.')
_STEP = flags.DEFINE_integer('step', None, '--mode=eval: the checkpoint of this step, not the latest.')
_EMA = flags.DEFINE_bool('ema', False, '--mode=eval: the checkpoint\'s moving average of the weights '
                         '(config.optim.ema_decay), main head.')
_BEST = flags.DEFINE_bool('best', False, '--mode=eval: the checkpoint saved with the best main-head '
                          'eval top-1 (config.train.keep_best keeps it).')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize().')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process.')
_CPU_COLLECTIVES = flags.DEFINE_enum('cpu_collectives', None, ['gloo', 'mpi'],
                                     'Collectives for multi-process runs on CPU (tests, laptops).')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  artifact.quiet_orbax_info_logs()
  if _CPU_COLLECTIVES.value:
    jax.config.update('jax_cpu_collectives_implementation', _CPU_COLLECTIVES.value)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  logging.info('JAX process %d/%d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if _MODE.value == 'train':
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  else:
    if _EXPORT_DIR.value and (_STEP.value is not None or _BEST.value or _EMA.value):
      raise app.UsageError('--step, --best and --ema choose what of --workdir to evaluate; an '
                           '--export_dir holds one network.')
    result = train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, export_dir=_EXPORT_DIR.value,
                                       step=_STEP.value, best=_BEST.value, ema=_EMA.value)
    print(json.dumps(result, indent=2))


def cli() -> None:
  """The `python -m dsop_jax.main` command line (`dsop-train`)."""
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)


if __name__ == '__main__':
  cli()
