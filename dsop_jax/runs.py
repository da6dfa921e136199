"""The training workdir's contract: what a run writes beside its checkpoints, and reading it back.

A workdir holds `config.json` (the config it was trained with), `metrics.jsonl` (one JSON object per
evaluation: {"step", "epoch", "time", "eval": {head: {"top1", "top5", "loss"}}, "train": {...}}),
`checkpoints/` (Orbax, `checkpointing.Checkpointer`), TensorBoard summaries and `train.lock` (held
by the training run that writes the workdir, `workdir_lock`). This module writes and reads the
first two, holds the lock, decides whether a config may resume a workdir's checkpoints, and
restores a checkpoint's variables without building an optimiser step. Evaluation, export and plotting read
workdirs through it; only `train` writes them.
"""

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Any, Dict, Iterator, Mapping

from absl import logging
import jax
import ml_collections

from dsop_jax import checkpointing
from dsop_jax import models
from dsop_jax import sharding
from dsop_jax import steps


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds WORKDIR for one training run: an exclusive `flock` on WORKDIR/train.lock, which names
  its holder (host, pid, start time). The operating system drops the lock when the holder exits,
  however it ends (SIGKILL included), so a crashed run never leaves it stuck. Process 0 holds it
  for a multi-process run. Evaluation, export and plot read a workdir without it.

  Raises:
    ValueError: another process holds WORKDIR, naming it.
  """
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'train.lock')
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      raise ValueError(f'--workdir={workdir!r} is being trained by {holder} ({path}); one '
                       'training run at a time per workdir. Wait for it, stop it, or use another '
                       '--workdir (evaluation, export and plot may read it meanwhile).') from None
    f.seek(0)
    f.truncate()
    f.write(f'host {socket.gethostname()} pid {os.getpid()} since '
            f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """WORKDIR/config.json (process 0 only)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))


def append_metrics(workdir: str, record: Mapping[str, Any]) -> None:
  """Appends one evaluation record to WORKDIR/metrics.jsonl (process 0 only), after repairing a
  torn last line (`repair_metrics`), so a record never lands on the end of a broken one."""
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'metrics.jsonl')
    repair_metrics(path)
    with open(path, 'a') as f:
      f.write(json.dumps(record) + '\n')
      f.flush()
      os.fsync(f.fileno())


def repair_metrics(path: str) -> None:
  """Ends metrics.jsonl with a whole line. A run killed while writing a record can leave its last
  line without the newline: if that text is a whole JSON record, the newline is added; otherwise
  the torn text is cut off the file and appended to `PATH.torn` (kept, not lost), with a warning."""
  if not os.path.exists(path) or not os.path.getsize(path):
    return
  with open(path, 'rb+') as f:
    f.seek(-1, os.SEEK_END)
    if f.read(1) == b'\n':
      return
    f.seek(0)
    content = f.read()
    start = content.rfind(b'\n') + 1
    torn = content[start:]
    try:
      json.loads(torn)
    except ValueError:
      with open(path + '.torn', 'ab') as kept:
        kept.write(torn + b'\n')
      f.truncate(start)
      logging.warning('%s ended with an incomplete record (%d bytes, from a run that was killed '
                      'while writing); it was moved to %s.torn.', path, len(torn), path)
    else:
      f.seek(0, os.SEEK_END)
      f.write(b'\n')


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training workdir was trained with (its config.json)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'{workdir!r} holds no config.json: not a dsop_jax training workdir.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _flatten(tree: Any, prefix: str) -> Dict[str, Any]:
  if isinstance(tree, Mapping):
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f'{prefix}.{key}').items()}
  return {prefix: list(tree) if isinstance(tree, (list, tuple)) else tree}


# Model fields added after checkpoints may have been written, with the value that builds what a
# config without them built; a saved config.json without them reads as holding these.
_LEGACY_MODEL_FIELDS = {'config.model.stage_sizes': [], 'config.model.head.pool': 'gap'}


def _structure_fields(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The fields that fix a checkpoint's structure: the model's and the optimiser's kind."""
  fields = {**_LEGACY_MODEL_FIELDS, **_flatten(config.model.to_dict(), 'config.model')}
  fields.pop('config.model.bn_group_size', None)  # How BN groups a batch: no variable depends on it.
  if not models.BACKBONES.get(config.model.name, (None, True))[1]:
    fields.pop('config.model.last_stride', None)  # CIFAR networks have none (older configs had one).
  if fields['config.model.head.pool'] == 'gap':  # GAP + FC: the other head fields build nothing.
    fields = {k: v for k, v in fields.items()
              if not k.startswith('config.model.head.') or k == 'config.model.head.pool'}
  fields['config.optim.name'] = config.optim.get('name')
  return fields


def check_resume_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume WORKDIR's checkpoints with a config that builds a different state.

  The model and the optimiser's kind fix the checkpoint's structure; other fields (epochs,
  schedule, logging) may change between runs. Raises ValueError naming each differing field.
  """
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    return
  saved = workdir_config(workdir)
  ours = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
  before, now = _structure_fields(saved), _structure_fields(ours)
  diff = [f'{k} = {now.get(k)!r} (checkpoints: {before.get(k)!r})'
          for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
  if diff:
    raise ValueError(f'{workdir!r} holds checkpoints of another model or optimiser; this config '
                     f'differs in: {"; ".join(diff)}. Use a new --workdir, or the config the '
                     f'checkpoints were trained with (WORKDIR/config.json).')


def restore_variables(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """{'params', 'batch_stats'} of the training model from WORKDIR's latest readable checkpoint;
  the workdir is only read (an unreadable newest checkpoint is skipped, not moved)."""
  mesh = sharding.create_mesh()
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  try:
    state, _ = checkpointer.restore(steps.abstract_initial_state(config, mesh))
  finally:
    checkpointer.close()
  return {'params': state.params, 'batch_stats': state.batch_stats}
