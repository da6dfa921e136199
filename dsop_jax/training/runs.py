"""The training workdir's contract: what a run writes beside its checkpoints, and reading it back.

A workdir holds `config.json` (the config it was trained with), `metrics.jsonl` (one JSON object per
evaluation: {"step", "epoch", "time", "train_seconds" (wall seconds of training so far, resumed
segments summed), "eval": {head: {"top1", "top5", "loss"}}, "train": {...}}),
`checkpoints/` (Orbax, `checkpointing.Checkpointer`), TensorBoard summaries and `train.lock` (held
by the training run that writes the workdir, `workdir_lock`). This module writes and reads the
first two (and class_names.json), holds the lock, and decides whether a config may resume a
workdir's checkpoints; `restoring` reads a checkpoint's variables. Evaluation, export and plotting
read workdirs through them; only `train` writes them.
"""

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import jax
import ml_collections

from dsop_jax import config_files
from dsop_jax import paths
from dsop_jax.data import datasets
from dsop_jax.models import registry
from dsop_jax.training import optim
from dsop_jax.training import steps


@contextlib.contextmanager
def workdir_lock(workdir: paths.PathLike) -> Iterator[None]:
  """Holds WORKDIR for one training run: an exclusive `flock` on WORKDIR/train.lock, which names
  its holder (host, pid, start time). The operating system drops the lock when the holder exits,
  however it ends (SIGKILL included), so a crashed run never leaves it stuck. Process 0 holds it
  for a multi-process run. Evaluation, export and plot read a workdir without it. Object stores
  (gs://) have no locks: there the holder is recorded in train.lock, and nothing stops a second run.

  Raises:
    ValueError: another process holds WORKDIR, naming it.
  """
  if jax.process_index() != 0:
    yield
    return
  directory = paths.path(workdir, '--workdir')
  directory.mkdir(parents=True, exist_ok=True)
  holder = (f'host {socket.gethostname()} pid {os.getpid()} since '
            f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
  if paths.is_remote(directory):
    logging.warning('%s is on an object store, where runs cannot lock it: train one run at a time '
                    'in it.', directory)
    (directory / 'train.lock').write_text(holder)
    yield
    return
  path = os.fspath(directory / 'train.lock')
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      other = f.read().strip() or 'another process'
      raise ValueError(f'--workdir={workdir!r} is being trained by {other} ({path}); one '
                       'training run at a time per workdir. Wait for it, stop it, or use another '
                       '--workdir (evaluation, export and plot may read it meanwhile).') from None
    f.seek(0)
    f.truncate()
    f.write(holder)
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def write_config(config: ml_collections.ConfigDict, workdir: paths.PathLike,
                 resumed_at: Optional[int] = None) -> None:
  """WORKDIR/config.json (process 0 only). A run resumed at step N with a config that differs from
  the saved one keeps the earlier config as WORKDIR/config.until_step_N.json, so every segment of
  the run's history keeps the config it ran with."""
  if jax.process_index() != 0:
    return
  directory = paths.path(workdir, '--workdir')
  path, text = directory / 'config.json', config.to_json_best_effort(indent=2)
  if resumed_at is not None and path.exists():
    saved = path.read_text()
    if saved == text:
      return
    segment = directory / f'config.until_step_{resumed_at}.json'
    if not segment.exists():  # A rerun after a crash keeps the first one.
      paths.write_atomic(segment, saved)
  paths.write_atomic(path, text)


CLASS_NAMES_FILE = 'class_names.json'


def write_class_names(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> None:
  """WORKDIR/class_names.json: the dataset's class names in label order, when known, so exports
  and predictions name the classes wherever the data has gone (process 0 only)."""
  names = datasets.class_names(config)
  if jax.process_index() != 0 or names is None:
    return
  paths.write_atomic(paths.path(workdir) / CLASS_NAMES_FILE, json.dumps(names))


def class_names(config: ml_collections.ConfigDict, workdir: paths.PathLike
                ) -> Optional[List[str]]:
  """The class names a training run recorded (`write_class_names`), else the dataset's."""
  path = paths.path(workdir) / CLASS_NAMES_FILE
  if path.exists():
    return json.loads(path.read_text())
  return datasets.class_names(config)


METRICS_FILE = 'metrics.jsonl'


def evaluation_at(workdir: paths.PathLike, step: int) -> Optional[Dict[str, Any]]:
  """The record of WORKDIR/metrics.jsonl for `step` (the last one written for it), or None; lines
  that are not JSON objects are passed over."""
  found = None
  path = paths.path(workdir) / METRICS_FILE
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict) and record.get('step') == step:
        found = record
  return found


def append_metrics(workdir: paths.PathLike, record: Mapping[str, Any]) -> None:
  """Appends one evaluation record to WORKDIR/metrics.jsonl (process 0 only), after repairing a
  torn last line (`repair_metrics`), so a record never lands on the end of a broken one."""
  if jax.process_index() == 0:
    path = paths.path(workdir) / METRICS_FILE
    repair_metrics(path)
    paths.append_line(path, json.dumps(record))


def repair_metrics(path: paths.PathLike) -> None:
  """Ends metrics.jsonl with a whole line. A run killed while writing a record can leave its last
  line without the newline: if that text is a whole JSON record, the newline is added; otherwise
  the torn text is cut off the file and appended to `PATH.torn` (kept, not lost), with a warning."""
  path = paths.path(path)
  if not path.exists():
    return
  with path.open('rb') as f:  # The last byte first: a whole line is the usual case.
    size = f.seek(0, os.SEEK_END)
    if not size:
      return
    f.seek(size - 1)
    if f.read(1) == b'\n':
      return
    f.seek(0)
    content = f.read()
  start = content.rfind(b'\n') + 1
  torn = content[start:]
  try:
    json.loads(torn)
  except ValueError:
    paths.append_line(path.with_name(path.name + '.torn'), torn)
    paths.write_atomic(path, content[:start])
    logging.warning('%s ended with an incomplete record (%d bytes, from a run that was killed '
                    'while writing); it was moved to %s.torn.', path, len(torn), path)
  else:
    paths.write_atomic(path, content + b'\n')


def workdir_config(workdir: paths.PathLike) -> ml_collections.ConfigDict:
  """The config a training workdir was trained with (its config.json), brought up to the current
  schema (`config_files.upgrade`: fields added since it was written hold their defaults)."""
  path = paths.path(workdir) / 'config.json'
  if not path.exists():
    raise ValueError(f'{workdir!r} holds no config.json: not a dsop_jax training workdir.')
  try:
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict):
      raise ValueError(f'a JSON {type(saved).__name__}, not an object')
  except ValueError as e:  # json.JSONDecodeError, or a JSON value that is not an object.
    raise ValueError(
        f'{path} is not a valid config file ({e}): it was damaged or edited by hand. Restore it '
        'from a backup or from a config.until_step_N.json beside it, or write the config the '
        'run was trained with there (`config.to_json()` of the same config file and '
        'overrides); the checkpoints themselves are untouched.') from e
  return config_files.upgrade(saved, str(path))


def flatten(tree: Any, prefix: str) -> Dict[str, Any]:
  """{'PREFIX.section.field': value} of a nested config dict, sequences as lists."""
  if isinstance(tree, Mapping):
    return {k: v for key, sub in tree.items() for k, v in flatten(sub, f'{prefix}.{key}').items()}
  return {prefix: list(tree) if isinstance(tree, (list, tuple)) else tree}


def _structure_fields(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The fields that fix a checkpoint's structure: the model's and the optimiser's kind."""
  fields = flatten(config.model.to_dict(), 'config.model')
  fields.pop('config.model.bn_group_size', None)  # How BN groups a batch: no variable depends on it.
  fields.pop('config.model.init_from', None)  # Where the first step's weights came from.
  if not registry.BACKBONES.get(config.model.name, (None, True))[1]:
    fields.pop('config.model.last_stride', None)  # CIFAR networks have none (older configs had one).
  if fields['config.model.head.pool'] == 'gap':  # GAP + FC: the other head fields build nothing.
    fields = {k: v for k, v in fields.items()
              if not k.startswith('config.model.head.') or k == 'config.model.head.pool'}
  fields['config.optim.name'] = config.optim.name
  # Clipping, accumulation and the moving average add to the training state (whatever their
  # values); absent from configs written before they existed, as off.
  fields['config.optim.clip_grad_norm > 0'] = config.optim.clip_grad_norm > 0
  fields['config.train.accumulate_steps > 1'] = optim.accumulate_steps(config) > 1
  fields['config.optim.ema_decay > 0'] = steps.uses_ema(config)
  fields['config.optim.backbone_lr_scale != 1'] = optim.backbone_lr_scale(config) != 1.0
  return fields


_SCHEDULE_FIELDS = ('learning_rate', 'schedule', 'decay_epochs', 'decay_factor', 'warmup_epochs',
                    'decay_every_epochs')


def continuity_fields(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The fields a resumed run must share with the run that wrote its checkpoints, beyond the
  state's structure: what each step sees (global batch, steps per update, seed, every data field
  but data_dir, which says where the data lies, not what it is) and the learning-rate schedule
  (with a cosine schedule, num_epochs shapes it too). Changing one mid-run breaks the epoch accounting and exact resume."""
  fields = flatten(config.data.to_dict(), 'config.data')
  fields.pop('config.data.data_dir')
  fields['config.train.batch_size'] = config.train.batch_size
  fields['config.train.accumulate_steps'] = config.train.accumulate_steps
  fields['config.optim.lr_reference_batch'] = config.optim.lr_reference_batch
  fields['config.optim.backbone_lr_scale'] = config.optim.backbone_lr_scale
  fields['config.train.seed'] = config.train.seed
  for k in _SCHEDULE_FIELDS:
    value = config.optim[k]
    fields[f'config.optim.{k}'] = list(value) if isinstance(value, (list, tuple)) else value
  if config.optim.schedule == 'cosine':
    fields['config.train.num_epochs'] = config.train.num_epochs
  return fields


def allowed_resume_changes(config: ml_collections.ConfigDict) -> List[str]:
  """config.train.allow_resume_changes as full field names ('config.train.batch_size')."""
  value = config.train.allow_resume_changes
  names = [n.strip() for n in value.split(',') if n.strip()] if isinstance(value, str) else None
  if names is None:
    raise ValueError(f'config.train.allow_resume_changes = {value!r} is invalid: give a '
                     "comma-separated string of field names, e.g. 'train.batch_size,data.fit'.")
  names = [n if n.startswith('config.') else f'config.{n}' for n in names]
  known = continuity_fields(config)
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f'config.train.allow_resume_changes names {", ".join(unknown)}, which a resume '
                     'does not check; allowed: '
                     f'{", ".join(n[len("config."):] for n in sorted(known))}.')
  return names


def _differences(before: Dict[str, Any], now: Dict[str, Any], keys: Sequence[str]) -> List[str]:
  return [f'{k} = {now.get(k)!r} (checkpoints: {before.get(k)!r})' for k in keys
          if before.get(k) != now.get(k)]


def _saved_and_ours(config: ml_collections.ConfigDict, workdir: str
                    ) -> Tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """WORKDIR/config.json and `config` as JSON round-trips it (tuples as lists), to compare."""
  return workdir_config(workdir), ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))


def check_same_structure(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ValueError naming each model or optimiser field in which `config` differs from the
  WORKDIR/config.json its checkpoints were written with (they would not restore onto its state)."""
  _check_same_structure(*_saved_and_ours(config, workdir), workdir)


def _check_same_structure(saved: ml_collections.ConfigDict, ours: ml_collections.ConfigDict,
                          workdir: str) -> None:
  before, now = _structure_fields(saved), _structure_fields(ours)
  diff = _differences(before, now, sorted(set(before) | set(now)))
  if diff:
    raise ValueError(f'{workdir!r} holds checkpoints of another model or optimiser; this config '
                     f'differs in: {"; ".join(diff)}. Use a new --workdir, or the config the '
                     f'checkpoints were trained with (WORKDIR/config.json).')


def check_resume_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume WORKDIR's checkpoints with a config that builds a different state, or that
  changes what the steps see or the schedule (`continuity_fields`) without
  config.train.allow_resume_changes naming the change.

  The model and the optimiser's kind fix the checkpoint's structure; other fields (logging,
  checkpoint intervals, evaluation, num_epochs of a non-cosine schedule) may change between runs.
  Raises ValueError naming each differing field.
  """
  allowed = allowed_resume_changes(config)
  if not (paths.path(workdir) / 'config.json').exists():
    return
  saved, ours = _saved_and_ours(config, workdir)
  _check_same_structure(saved, ours, workdir)
  before, now = continuity_fields(saved), continuity_fields(ours)
  diff = _differences(before, now, sorted((set(before) & set(now)) - set(allowed)))
  if diff:
    raise ValueError(
        f'{workdir!r} was trained with other data or another schedule; this config differs in: '
        f'{"; ".join(diff)}. Resuming would change what each step sees and the epoch accounting. '
        'Use the config in WORKDIR/config.json, a new --workdir, or allow the change with '
        '--config.train.allow_resume_changes=' + ','.join(
            k.split(' = ')[0][len('config.'):] for k in diff) + '.')
  _check_same_classes(config, workdir)


def _check_same_classes(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses data whose classes are not those the run recorded (class_names.json), in the same
  order: label i must mean what it meant to the checkpoints (e.g. a folder `data_dir` with other
  class directories)."""
  recorded = paths.path(workdir) / CLASS_NAMES_FILE
  ours = datasets.class_names(config)
  if ours is None or not recorded.exists():
    return
  theirs = json.loads(recorded.read_text())
  if list(theirs) == list(ours):
    return
  raise ValueError(
      f'{workdir!r} was trained on the classes {_listed(theirs)} (label order) and '
      f'config.data ({config.data.dataset!r} at {config.data.data_dir!r}) has {_listed(ours)}: '
      'resuming would give its labels other meanings. Point config.data.data_dir at the data the '
      'run was trained on, or start a new --workdir.')


def _listed(names: Sequence[str]) -> str:
  return repr(list(names)) if len(names) <= 8 else f'{list(names)[:8]!r} ... ({len(names)})'
