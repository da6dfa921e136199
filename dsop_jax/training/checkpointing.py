"""Orbax checkpoints of the training state, with the metadata needed to resume exactly.

A checkpoint holds two items: 'state' (step, params, batch_stats, opt_state: the whole pytree, saved
as it is sharded and restored onto the same shardings) and 'meta' (JSON: step, epoch and a BLAKE2b
checksum of every value of the state; the config sits beside the checkpoints in
WORKDIR/config.json). A restored state whose values do not match its checksum (bits flipped on disk
after the save) is treated like an unreadable checkpoint. The data position and the RNG are functions of
(seed, step), so the step restores them too. Orbax
writes each checkpoint to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest one; a finalised checkpoint whose files were
damaged later is skipped at restore (see `Checkpointer.restore`).
"""

import hashlib
import signal
import threading
import time
from typing import Any, Mapping, Optional, Sequence, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from dsop_jax import paths

CHECKSUM = 'state_blake2b'  # The meta key of the state's checksum.


def state_checksum(state: Any) -> str:
  """BLAKE2b of every leaf's path, dtype, shape and bytes (the whole value, gathered from the
  devices; every process computes the same digest)."""
  digest = hashlib.blake2b(digest_size=32)
  for path, leaf in jax.tree.leaves_with_path(state):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    elif isinstance(leaf, jax.Array):
      leaf = leaf.addressable_data(0) if leaf.is_fully_replicated else leaf
    value = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f'{jax.tree_util.keystr(path)}|{value.dtype}|{value.shape}|'.encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def _ranking(metrics: Mapping[str, float]) -> float:
  return metrics[BEST_METRIC]


BEST_METRIC = 'top1'  # What a checkpoint's evaluation is ranked by: the main head's top-1.


class Checkpointer:
  """Periodic/final saves of the training state under WORKDIR/checkpoints, keeping the last N, and
  with `keep_best` also the one whose evaluation had the best main-head top-1."""

  def __init__(self, workdir: paths.PathLike, max_to_keep: int = 3, read_only: bool = False,
               keep_best: bool = False, async_saves: bool = False):
    """`read_only`: for readers (evaluation, export, plot): nothing in WORKDIR is created, moved
    or deleted; an unreadable latest checkpoint is skipped but left where it is. `async_saves`:
    `save` returns once the state is copied to host memory and its checksum taken; Orbax writes
    the files in the background (into a temporary directory renamed when complete, as a
    blocking save does, so a save cut short is never restored) and the next save, a restore or
    `close` waits for it."""
    self.directory = paths.path(workdir, '--workdir') / 'checkpoints'
    self.read_only = read_only
    # The last N, and the best evaluated one; a checkpoint saved with an evaluation (`save`'s
    # `top1`) records it beside the state, so the choice survives restarts.
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(max_to_keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=_ranking, n=int(keep_best),
                                      keep_checkpoints_without_metrics=False)])
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(best_fn=_ranking, preservation_policy=policy,
                                             create=not read_only,
                                             enable_async_checkpointing=async_saves))
    self.async_saves = async_saves

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def best_step(self) -> int:
    """The step whose checkpoint was saved with the best main-head top-1 (the latest of equals).

    Raises:
      ValueError: no checkpoint was saved with an evaluation.
    """
    scored = [(self.manager.metrics(step), step) for step in self.manager.all_steps()]
    scored = [(_ranking(metrics), step) for metrics, step in scored if metrics]
    if not scored:
      raise ValueError(f'No checkpoint in {self.directory} was saved with an evaluation (steps '
                       f'{self.manager.all_steps()}); train with config.train.keep_best=True to '
                       'keep the best one.')
    return max(scored)[1]

  def steps(self) -> Sequence[int]:
    return self.manager.all_steps()

  def save(self, step: int, state: Any, meta: Mapping[str, Any],
           top1: Optional[float] = None) -> None:
    """Saves and logs; every process must call it (the save is collective). `top1`: the main
    head's eval top-1 at this step, when it was evaluated. Blocking unless `async_saves`."""
    meta = {**meta, CHECKSUM: state_checksum(state)}
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True,
                      metrics=None if top1 is None else {BEST_METRIC: float(top1)})
    if self.async_saves:
      logging.info('Saving checkpoint at step %d in %s (in the background)', step, self.directory)
      return
    self.manager.wait_until_finished()
    logging.info('Saved checkpoint at step %d in %s', step, self.directory)

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Tuple[Any, dict]:
    """Restores `step` (default: the latest readable one) onto the structure and shardings of
    `abstract_state`.

    Without `step`, a latest checkpoint that cannot be read (files truncated or lost after Orbax
    finalised it, e.g. a full disk or a storage fault) is skipped with a warning and moved to
    WORKDIR/corrupt_checkpoints/ (kept, not deleted; left in place when `read_only`), and the one
    before it is used. If no step can
    be read, nothing is moved and the error of the latest is raised: a checkpoint of another config
    fails at every step alike.

    Raises:
      ValueError: there is no checkpoint, or it does not match the state of this config (the
        message names the mismatching keys).
    """
    self.manager.wait_until_finished()  # A background save of this manager's.
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    if step is not None:
      return self._restore(step, abstract)
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise ValueError(f'No checkpoint in {self.directory}.')
    failed, vanished, tried = [], [], set()
    while True:
      for candidate in steps:
        tried.add(candidate)
        try:
          restored = self._restore(candidate, abstract)
        except Exception as e:  # pylint: disable=broad-except  (any read failure of one step)
          if (self.directory / str(candidate)).exists():
            failed.append((candidate, e))
          else:  # Deleted while read: a training run on this workdir keeps only its last N.
            vanished.append(candidate)
          continue
        for bad in vanished:
          logging.warning('Checkpoint at step %d in %s was removed while being read (a training '
                          'run on this workdir deletes its older checkpoints); using step %d.',
                          bad, self.directory, candidate)
        for bad, error in failed:
          logging.warning('Checkpoint at step %d in %s cannot be restored (%s: %s); skipping it '
                          'and resuming from step %d.', bad, self.directory, type(error).__name__,
                          str(error)[:500], candidate)
        self._quarantine([bad for bad, _ in failed])
        return restored
      self.manager.reload()  # Steps saved meanwhile (by a run training this workdir) are tried.
      steps = sorted(set(self.manager.all_steps()) - tried, reverse=True)
      if not steps:
        break
    if failed:
      raise failed[0][1]
    raise ValueError(f'Every checkpoint in {self.directory} (steps {sorted(vanished)}) was removed '
                     'while being read, and no newer one appeared: is a training run deleting '
                     'them? Retry when it has saved its next checkpoint.')

  def _restore(self, step: int, abstract: Any) -> Tuple[Any, dict]:
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError) as e:
      raise ValueError(f'The checkpoint at step {step} in {self.directory} cannot be restored: '
                       f'it is unreadable or does not match the model and optimiser of this '
                       f'config: {e}') from e
    saved = restored.meta.get(CHECKSUM)  # Checkpoints written before checksums have none.
    if saved is not None and state_checksum(restored.state) != saved:
      raise ValueError(f'The checkpoint at step {step} in {self.directory} cannot be restored: its '
                       'values do not match the checksum saved with them (its files were damaged '
                       'after the save).')
    return restored.state, restored.meta

  def _quarantine(self, steps: Sequence[int]) -> None:
    """Moves unreadable step directories out of the way, so later saves of those steps succeed."""
    if not steps or self.read_only:
      return
    target = self.directory.parent / 'corrupt_checkpoints'
    if jax.process_index() == 0:
      target.mkdir(parents=True, exist_ok=True)
      for step in steps:
        destination = target / f'{step}-{int(time.time())}'
        paths.move_tree(self.directory / str(step), destination)
        logging.warning('Moved the unreadable checkpoint of step %d to %s.', step, destination)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('dsop_jax_checkpoint_quarantine')
    self.manager.reload()

  def close(self) -> None:
    """Waits for a background save to be written, then releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()


class PreemptionWatch:
  """Turns SIGTERM into a step at which the training loop saves and stops.

  One process: a Python SIGTERM handler sets a flag the loop polls. Several processes: the signal
  may reach only some hosts, and a save is collective, so every process must stop at the same step.
  jax.distributed's preemption sync manager catches SIGTERM itself and
  `multihost_utils.reached_preemption_sync_point(step)` turns true on all processes at the same
  step; no Python handler is installed then (it would replace JAX's and hang the other hosts).
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None

  def __enter__(self) -> 'PreemptionWatch':
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()
