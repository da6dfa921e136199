"""Orbax checkpoints of the training state, with the metadata needed to resume exactly.

A checkpoint holds two items: 'state' (step, params, batch_stats, opt_state: the whole pytree, saved
as it is sharded and restored onto the same shardings) and 'meta' (JSON: step and epoch; the config
sits beside the checkpoints in WORKDIR/config.json). The data position and the RNG are functions of
(seed, step), so the step restores them too. Orbax
writes each checkpoint to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest one.
"""

import os
import signal
import threading
from typing import Any, Mapping, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp


def quiet_orbax_info_logs() -> None:
  """Orbax logs every file it writes at INFO; keep its warnings and errors only."""
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.WARNING or '/orbax/' not in record.pathname)


class Checkpointer:
  """Periodic/final saves of the training state under WORKDIR/checkpoints, keeping the last N."""

  def __init__(self, workdir: str, max_to_keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
    """Saves (blocking) and logs; every process must call it (the save is collective)."""
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(dict(meta))), force=True)
    self.manager.wait_until_finished()
    logging.info('Saved checkpoint at step %d in %s', step, self.directory)

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Tuple[Any, dict]:
    """Restores `step` (default: latest) onto the structure and shardings of `abstract_state`.

    Raises:
      ValueError: there is no checkpoint, or it does not match the state of this config (the
        message names the mismatching keys).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise ValueError(f'No checkpoint in {self.directory}.')
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError) as e:
      raise ValueError(f'The checkpoint at step {step} in {self.directory} does not match the '
                       f'model and optimiser of this config: {e}') from e
    return restored.state, restored.meta

  def close(self) -> None:
    self.manager.close()


class PreemptionWatch:
  """Turns SIGTERM into a flag the training loop polls, so it saves before exiting.

  With several processes, `jax.experimental.multihost_utils.reached_preemption_sync_point` makes all
  processes agree on the step (it needs the preemption service of jax.distributed).
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None

  def __enter__(self) -> 'PreemptionWatch':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return self._flag.is_set() or multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()
