"""Reading a run's variables: its training state rebuilt abstractly (the structure its config
gives), restored from one of its checkpoints, and the variables (or their moving average) taken
out. Used by export, evaluation, pretrained weights from a workdir, distillation teachers and the
analysis tools; the workdir is only read.
"""

from typing import Any, Dict, Optional, Tuple

from absl import logging
import ml_collections

from dsop_jax import paths
from dsop_jax.training import checkpointing
from dsop_jax.training import runs
from dsop_jax.training import sharding
from dsop_jax.training import steps


def restore_variables(config: ml_collections.ConfigDict, workdir: str, step: Optional[int] = None,
                      best: bool = False, ema: bool = False) -> Dict[str, Any]:
  """The variables of `restore_variables_and_step`."""
  return restore_variables_and_step(config, workdir, step, best, ema)[0]


def restore_variables_and_step(config: ml_collections.ConfigDict, workdir: str,
                               step: Optional[int] = None, best: bool = False, ema: bool = False
                               ) -> Tuple[Dict[str, Any], int]:
  """({'params', 'batch_stats'}, step) of the training model from one of WORKDIR's checkpoints: `step`,
  or with `best` the one saved with the best main-head eval top-1, or else the latest readable one
  (an unreadable newest checkpoint is skipped, not moved), its moving average of the variables
  instead with `ema`; the workdir is only read.

  Raises:
    ValueError: `step` has no checkpoint (the message lists those there are), or `best` and no
      checkpoint was saved with an evaluation.
  """
  if step is not None and best:
    raise ValueError('Give a step or best, not both.')
  if ema and not steps.uses_ema(config):
    raise ValueError(f'{workdir!r} was trained without a moving average of its weights '
                     '(config.optim.ema_decay = 0): there is no EMA to read.')
  if (paths.path(workdir) / 'config.json').exists():  # Fields named, not a shape dump.
    runs.check_same_structure(config, workdir)
  mesh = sharding.create_mesh()
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  try:
    if best:
      step = checkpointer.best_step()
      logging.info('The best evaluated checkpoint of %s is step %d.', workdir, step)
    if step is not None and step not in checkpointer.steps():
      raise ValueError(f'{workdir!r} has no checkpoint of step {step}; it has steps '
                       f'{list(checkpointer.steps())}.')
    state, _ = checkpointer.restore(steps.abstract_initial_state(config, mesh), step=step)
  finally:
    checkpointer.close()
  if ema:
    return state.ema, int(state.step)
  return {'params': state.params, 'batch_stats': state.batch_stats}, int(state.step)
