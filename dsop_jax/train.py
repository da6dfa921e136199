"""Training and evaluation of DSoP-Net: the pure train/eval steps and `train_and_evaluate`.

`train_step` applies the model, assembles Eq. 1 with `losses.dsop_loss`, updates the state and returns
per-head metrics; it never reads globals or talks to the host. A step whose loss is not finite in any
head leaves the state untouched and reports it, so the host can stop (or skip, per config) before a
bad state reaches a checkpoint. `train_and_evaluate(config, workdir)` drives everything: data,
the mesh, checkpoints and resume, the training policies of Section V-C, metrics and evaluation.

Training policies (`config.train.policy`):
- 'one_phase': backbone and branches trained jointly from scratch (the paper's default);
- 'early_removal': all branches removed at `config.train.remove_branches_at_epoch`; training goes on
  with the main head alone (Section V-C: epochs 30, 45, 60);
- 'two_phase': the backbone is loaded from `config.train.backbone_checkpoint` (an export directory or a
  training workdir) and frozen, parameters and BN statistics; only the branches are trained.
"""

import ctypes
import functools
import json
import os
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dsop_jax import checkpointing
from dsop_jax import dsop
from dsop_jax import export
from dsop_jax import losses
from dsop_jax import models
from dsop_jax import optim
from dsop_jax import sharding

POLICIES = ('one_phase', 'early_removal', 'two_phase')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def head_metrics(*, heads: Mapping[str, jax.Array], labels: jax.Array, terms: Mapping[str, jax.Array]
                 ) -> Dict[str, jax.Array]:
  """Per-head loss, top-1 and top-5 accuracy of a batch (means)."""
  metrics = {}
  for name, logits in heads.items():
    k = min(5, logits.shape[-1])
    top = jax.lax.top_k(logits, k)[1]
    metrics[f'{name}/loss'] = terms[name]
    metrics[f'{name}/top1'] = jnp.mean(top[:, 0] == labels)
    metrics[f'{name}/top5'] = jnp.mean(jnp.any(top == labels[:, None], axis=-1))
  return metrics


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array,
               teacher_variables: Any = None, *, model: Any, tx: optax.GradientTransformation,
               loss_weights: Mapping[str, float], label_smoothing: float = 0.0,
               frozen: Sequence[str] = (),
               learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
               hessian: bool = False, teacher: Any = None, temperature: float = 4.0,
               soft_weight: float = 0.5) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimiser step on Eq. 1.

  Args:
    state: the training state.
    batch: {'image': (B, H, W, 3), 'label': (B,)}.
    rng: base key; the step's dropout key is derived from it and the step, so resuming replays it.
    teacher_variables: the distillation teacher's variables, when `teacher` is given.
    model: the (possibly branch-less) DSoP model to apply.
    tx: the optimiser.
    loss_weights: alpha/beta of every head the model outputs.
    label_smoothing: label smoothing of every head.
    frozen: top-level variable subtrees (e.g. 'backbone' in two-phase training, or every branch after
      early removal) whose parameters and BN statistics are kept as they are.
    learning_rate_fn: reported in the metrics when given.
    hessian: also compute a Hessian-vector product H z (forward-over-reverse, in the same pass as
      the gradient) with a Rademacher z drawn from (rng, step), and give the optimiser its
      Hutchinson diagonal estimate (AdaHessian, `optim.needs_hessian`).
    teacher: a plain network whose logits on the batch (eval mode, computed inside this step)
      are distilled into the main head with `losses.distillation_loss` (the Table II baselines);
      the model must then have no branches. `temperature` and `soft_weight` are its T and w.

  Returns:
    (new state, metrics): 'loss', per-head '<head>/loss|top1|top5', 'nonfinite' (1.0 when the step
    was rejected because a loss or the gradient was not finite), and 'learning_rate'.
  """
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    outputs, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_rng})
    if teacher is None:
      total, terms = losses.dsop_loss(outputs=outputs, labels=batch['label'],
                                      weights=loss_weights, label_smoothing=label_smoothing)
    else:
      teacher_logits, _ = teacher.apply(teacher_variables, batch['image'], train=False)
      total, parts = losses.distillation_loss(
          student_logits=outputs['logits'], teacher_logits=teacher_logits, labels=batch['label'],
          temperature=temperature, soft_weight=soft_weight)
      terms = {'logits': parts['hard'], 'distill_soft': parts['soft']}
    return total, (outputs, updates['batch_stats'], terms)

  if hessian:
    def grads_and_aux(params):
      (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      return grads, (total, aux)
    probe = optim.rademacher_like(state.params, jax.random.fold_in(dropout_rng, 1))
    grads, hessian_z, (total, (outputs, new_stats, terms)) = jax.jvp(
        grads_and_aux, (state.params,), (probe,), has_aux=True)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params,
                                       hessian_diagonal=optim.hutchinson_diagonal(hessian_z))
  else:
    (total, (outputs, new_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: {k: (old[k] if k in frozen or k not in new else new[k]) for k in old}
  new_params = keep(new_params, state.params)
  new_stats = keep(new_stats, state.batch_stats)
  finite = jnp.logical_and(jnp.all(jnp.stack([jnp.isfinite(t) for t in terms.values()])),
                           jnp.isfinite(optax.tree.norm(grads)))
  if hessian:  # A non-finite H z would poison AdaHessian's second moment for good.
    finite = jnp.logical_and(finite, jnp.isfinite(optax.tree.norm(hessian_z)))
  new_state = TrainState(step=state.step + 1, params=new_params, batch_stats=new_stats,
                         opt_state=new_opt_state)
  # A non-finite loss leaves parameters, statistics and optimiser state as they were.
  new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state,
                                     state.replace(step=state.step + 1))
  metrics = head_metrics(heads=losses.head_logits(outputs), labels=batch['label'], terms=terms)
  metrics['loss'] = total
  if 'distill_soft' in terms:
    metrics['distill_soft'] = terms['distill_soft']
  metrics['nonfinite'] = 1.0 - finite.astype(jnp.float32)
  if learning_rate_fn is not None:
    metrics['learning_rate'] = learning_rate_fn(state.step)
  return new_state, metrics


def eval_step(variables: Any, batch: Mapping[str, jax.Array], *,
              heads_fn: Callable[[Any, jax.Array], Mapping[str, jax.Array]]
              ) -> Dict[str, jax.Array]:
  """Sums over the real (mask=1) examples of a batch: per-head loss, top-1 and top-5 hits, count."""
  heads = heads_fn(variables, batch['image'])
  mask = batch['mask'].astype(jnp.float32)
  sums = {'count': jnp.sum(mask)}
  for name, logits in heads.items():
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, batch['label'][:, None], axis=-1)[:, 0]
    top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    sums[f'{name}/loss'] = jnp.sum(nll * mask)
    sums[f'{name}/top1'] = jnp.sum((top[:, 0] == batch['label']) * mask)
    sums[f'{name}/top5'] = jnp.sum(jnp.any(top == batch['label'][:, None], axis=-1) * mask)
  return sums


def training_model_heads(model: Any) -> Callable[[Any, jax.Array], Mapping[str, jax.Array]]:
  return lambda variables, x: losses.head_logits(model.apply(variables, x, train=False))


def plain_model_heads(model: Any) -> Callable[[Any, jax.Array], Mapping[str, jax.Array]]:
  return lambda variables, x: {'logits': model.apply(variables, x, train=False)[0]}


@functools.lru_cache(maxsize=8)
def _jitted_eval_step(heads_fn: Callable[..., Mapping[str, jax.Array]]) -> Callable[..., Any]:
  """One jitted eval step per heads function, so repeated evaluations do not recompile."""
  return jax.jit(functools.partial(eval_step, heads_fn=heads_fn))


def evaluate(variables: Any, heads_fn: Callable[..., Mapping[str, jax.Array]],
             batches: Iterable[Mapping[str, np.ndarray]], mesh: Any) -> Dict[str, Dict[str, float]]:
  """{head: {'loss', 'top1', 'top5'}} over every eval example (means)."""
  step = _jitted_eval_step(heads_fn)
  totals = None
  for batch in batches:
    sums = step(variables, sharding.shard_batch(batch, mesh))
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals.pop('count'))
  result: Dict[str, Dict[str, float]] = {}
  for key, value in totals.items():
    head, metric = key.rsplit('/', 1)
    result.setdefault(head, {})[metric] = float(value) / count
  return result


def _validate(config: ml_collections.ConfigDict, input_pipeline: Any) -> None:
  """Every check that can fail, before anything is compiled."""
  models.validate_model_config(config.model)
  models.loss_weights(config)
  optim.validate_optim_config(config)
  t = config.train
  if t.policy not in POLICIES:
    raise ValueError(f'config.train.policy = {t.policy!r} is invalid: allowed: {", ".join(POLICIES)}.')
  if not t.num_epochs > 0:
    raise ValueError(f'config.train.num_epochs = {t.num_epochs!r} is invalid: must be > 0.')
  if t.policy == 'early_removal' and not 0 < t.remove_branches_at_epoch < t.num_epochs:
    raise ValueError(f'config.train.remove_branches_at_epoch = {t.remove_branches_at_epoch!r} is '
                     f'invalid: must lie in (0, num_epochs = {t.num_epochs}).')
  if t.policy == 'two_phase' and not t.backbone_checkpoint:
    raise ValueError("config.train.backbone_checkpoint = '' is invalid: two_phase training needs "
                     'an export directory or training workdir holding the trained backbone.')
  for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    if not isinstance(t[field], int) or t[field] < 1:
      raise ValueError(f'config.train.{field} = {t[field]!r} is invalid: must be an integer >= 1.')
  if not t.eval_every_epochs > 0:
    raise ValueError(f'config.train.eval_every_epochs = {t.eval_every_epochs!r} is invalid: '
                     'must be > 0.')
  if not isinstance(t.seed, int) or t.seed < 0:
    raise ValueError(f'config.train.seed = {t.seed!r} is invalid: must be an integer >= 0.')
  if not 0.0 <= config.loss.label_smoothing < 1.0:
    raise ValueError(f'config.loss.label_smoothing = {config.loss.label_smoothing!r} is invalid: '
                     'must lie in [0, 1).')
  d = config.data
  if not isinstance(d.shuffle_buffer, int) or d.shuffle_buffer < 1:
    raise ValueError(f'config.data.shuffle_buffer = {d.shuffle_buffer!r} is invalid: must be an '
                     'integer >= 1.')
  if not isinstance(d.image_size, int) or d.image_size < 32:
    raise ValueError(f'config.data.image_size = {d.image_size!r} is invalid: must be an integer '
                     '>= 32.')
  for field, value in (('data.inception_crop', d.inception_crop),
                       ('optim.nesterov', config.optim.nesterov),
                       ('model.branches.psdr_aux', config.model.branches.psdr_aux)):
    if not isinstance(value, bool):
      raise ValueError(f'config.{field} = {value!r} is invalid: allowed: True, False.')
  distill = config.get('distill')
  if distill is not None and distill.teacher:
    if not os.path.isdir(distill.teacher):
      raise ValueError(f'config.distill.teacher = {distill.teacher!r} is invalid: not a directory '
                       '(give an export directory or a training workdir).')
    if models.branch_specs(config.model):
      raise ValueError('config.distill.teacher is set but the model has branches: distillation '
                       'trains a plain student (add the :plain config option).')
    if not distill.temperature > 0:
      raise ValueError(f'config.distill.temperature = {distill.temperature!r} is invalid: must be '
                       '> 0.')
    if not 0 <= distill.soft_weight <= 1:
      raise ValueError(f'config.distill.soft_weight = {distill.soft_weight!r} is invalid: must lie '
                       'in [0, 1].')
  if t.on_nonfinite not in ('stop', 'skip'):
    raise ValueError(f'config.train.on_nonfinite = {t.on_nonfinite!r} is invalid: allowed: stop, skip.')
  sharding.local_batch_size(t.batch_size, 'train.batch_size')
  sharding.local_batch_size(config.eval.batch_size, 'eval.batch_size')
  info = input_pipeline.dataset_info(config)
  if config.model.num_classes != info.num_classes:
    raise ValueError(f'config.model.num_classes = {config.model.num_classes} is invalid: '
                     f'{config.data.dataset} has {info.num_classes} classes.')
  if info.augment != 'imagenet' and config.data.image_size != 32:
    raise ValueError(f'config.data.image_size = {config.data.image_size} is invalid: '
                     f'{config.data.dataset} images are 32x32.')
  input_pipeline.check_prepared(config)


def state_init_fn(model: Any, tx: optax.GradientTransformation, image_size: int
                   ) -> Callable[[jax.Array], TrainState]:
  """rng -> a fresh TrainState (variables initialised on a 1-image batch); jit it with
  `models.jit_init`."""

  def init(rng):
    variables = model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                      batch_stats=variables.get('batch_stats', {}),
                      opt_state=tx.init(variables['params']))

  return init


def init_state(model: Any, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
               mesh: Any) -> TrainState:
  """A fresh TrainState of `model` (seed config.train.seed), replicated over the mesh."""
  init = state_init_fn(model, tx, config.data.image_size)
  return models.jit_init(init, out_shardings=sharding.replicated(mesh))(
      jax.random.PRNGKey(config.train.seed))


def load_first_order(path: str) -> Tuple[Any, Dict[str, Any]]:
  """(plain network, its variables) from an export directory or a training workdir (its latest
  checkpoint, branches detached)."""
  if os.path.isdir(os.path.join(path, 'checkpoints')):  # A training workdir, of its own config.
    config = workdir_config(path)
    variables = restore_variables(config, path)
    return models.create_backbone(config.model), {
        c: variables[c][dsop.BACKBONE] for c in ('params', 'batch_stats')}
  return export.load(path)


def _load_backbone(state: TrainState, config: ml_collections.ConfigDict, mesh: Any) -> TrainState:
  """Two-phase training: the trained backbone goes into the 'backbone' subtree."""
  path = config.train.backbone_checkpoint
  _, backbone = load_first_order(path)
  expected = {'params': state.params['backbone'], 'batch_stats': state.batch_stats['backbone']}
  export.check_same_structure(expected, backbone, f'backbone variables in {path}')
  backbone = jax.device_put(backbone, sharding.replicated(mesh))
  return state.replace(params={**state.params, dsop.BACKBONE: backbone['params']},
                       batch_stats={**state.batch_stats, dsop.BACKBONE: backbone['batch_stats']})


def _abstract_state(state: TrainState) -> TrainState:
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _summarise(history: Sequence[Mapping[str, jax.Array]]) -> Dict[str, float]:
  """Mean of every metric over the steps that report it (heads disappear at early removal)."""
  fetched = jax.device_get(list(history))
  keys = dict.fromkeys(k for m in fetched for k in m)
  return {k: float(np.mean([m[k] for m in fetched if k in m])) for k in keys}


def _nested(flat: Mapping[str, float]) -> Dict[str, Dict[str, float]]:
  heads: Dict[str, Dict[str, float]] = {}
  for key, value in flat.items():
    if '/' in key:
      head, metric = key.rsplit('/', 1)
      heads.setdefault(head, {})[metric] = value
  return heads


class _MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks',
      'keepcost')]


def host_memory() -> Dict[str, float]:
  """This process's host memory, logged with the training metrics so long runs show leaks.

  'host/rss_mib' is the resident set; 'host/heap_in_use_mib' the bytes malloc has handed out and
  not had back (glibc's mallinfo2; absent elsewhere), which, unlike the RSS, neither hides a leak
  in freed-but-resident memory nor grows with allocator fragmentation; 'host/open_files' counts
  file descriptors. Linux only; elsewhere an empty dict.
  """
  result: Dict[str, float] = {}
  try:
    with open('/proc/self/status') as f:
      rss_kb = next(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))
    result['host/rss_mib'] = rss_kb / 1024
    result['host/open_files'] = float(len(os.listdir('/proc/self/fd')))
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    result['host/heap_in_use_mib'] = (info.uordblks + info.hblkhd) / 2**20
  except (OSError, StopIteration, AttributeError):
    pass
  return result


_WARNED_SKIPS: Dict[str, float] = {}  # The last count warned about, per counter.


def _skipped_records(counters: Mapping[str, Any]) -> Dict[str, float]:
  """Unreadable records skipped so far by this process's pipelines, warned about once each."""
  counts = {f'data/skipped_{name}_records': float(c.value) for name, c in counters.items()}
  for key, count in counts.items():
    if count and count != _WARNED_SKIPS.get(key):
      logging.warning('%s = %d: unreadable records (incomplete images) were skipped; the run goes '
                      'on without them.', key, count)
      _WARNED_SKIPS[key] = count
  return counts


def _check_finite(history: Sequence[Mapping[str, jax.Array]], first_step: int, policy: str,
                  last_saved: Optional[int]) -> None:
  """Raises FloatingPointError naming the heads when a step in `history` had a non-finite loss."""
  fetched = jax.device_get(list(history))
  for offset, metrics in enumerate(fetched):
    if metrics['nonfinite']:
      bad = sorted(k.rsplit('/', 1)[0] for k, v in metrics.items()
                   if k.endswith('/loss') and not np.isfinite(v))
      what = f'loss in head(s) {bad}' if bad else 'gradient (every head loss was finite)'
      message = f'Non-finite {what} at step {first_step + offset + 1}; the update was rejected.'
      if policy == 'stop':
        raise FloatingPointError(f'{message} Training stopped; the last checkpoint (step '
                                 f'{last_saved}) is intact.')
      logging.warning('%s Skipping it (config.train.on_nonfinite = skip).', message)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from WORKDIR if it holds a checkpoint), evaluates and checkpoints.

  Writes WORKDIR/config.json, WORKDIR/checkpoints/, TensorBoard summaries, and WORKDIR/metrics.jsonl
  with one JSON object per evaluation: {"step", "epoch", "eval": {head: {"top1", "top5", "loss"}},
  "train": {...}}.
  """
  # Imported here so that the pure steps above (used by dsop_jax.benchmark on accelerator hosts)
  # need neither TensorFlow nor clu.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  from dsop_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  _validate(config, input_pipeline)
  mesh = sharding.create_mesh()
  teacher, teacher_variables = None, None  # Knowledge distillation (Table II baselines).
  distill = config.get('distill')
  if distill is not None and distill.teacher:
    teacher, teacher_variables = load_first_order(distill.teacher)
    if teacher.num_classes != config.model.num_classes:
      raise ValueError(f'config.distill.teacher = {distill.teacher!r} has {teacher.num_classes} '
                       f'classes; the student has {config.model.num_classes}.')
    teacher_variables = jax.device_put(teacher_variables, sharding.replicated(mesh))
    logging.info('Distilling %s into the main head (T=%g, soft weight %g).', distill.teacher,
                 distill.temperature, distill.soft_weight)
  t = config.train
  local_batch = sharding.local_batch_size(t.batch_size)
  steps_per_epoch = input_pipeline.steps_per_epoch(config, t.batch_size)
  num_steps = int(round(t.num_epochs * steps_per_epoch))
  eval_every = max(1, int(round(t.eval_every_epochs * steps_per_epoch)))
  removal_step = (int(round(t.remove_branches_at_epoch * steps_per_epoch))
                  if t.policy == 'early_removal' else None)

  model = models.create(config.model)
  weights = models.loss_weights(config)
  lr_fn = optim.learning_rate_schedule(config, steps_per_epoch, num_steps)
  tx = optim.create_optimizer(config, steps_per_epoch, num_steps)
  state = init_state(model, tx, config, mesh)
  branch_names = [k for k in state.params if k != dsop.BACKBONE]

  os.makedirs(workdir, exist_ok=True)
  checkpointer = checkpointing.Checkpointer(workdir, t.keep_checkpoints)
  last_saved = checkpointer.latest_step()
  if last_saved is not None:
    check_resume_config(config, workdir)
    state, _ = checkpointer.restore(_abstract_state(state))  # Skips unreadable checkpoints.
    last_saved = int(state.step)
    logging.info('Resuming from step %d in %s', last_saved, workdir)
  elif t.policy == 'two_phase':
    state = _load_backbone(state, config, mesh)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  step_fn = functools.partial(
      train_step, tx=tx, label_smoothing=config.loss.label_smoothing, learning_rate_fn=lr_fn,
      hessian=optim.needs_hessian(config), teacher=teacher,
      **({} if teacher is None else dict(temperature=distill.temperature,
                                          soft_weight=distill.soft_weight)))
  jit_step = lambda **kw: jax.jit(functools.partial(step_fn, **kw), donate_argnums=(0,))
  full_step = jit_step(model=model, loss_weights=weights,
                       frozen=(dsop.BACKBONE,) if t.policy == 'two_phase' else ())
  main_only_step = None
  if removal_step is not None:  # Branches detached: the backbone alone, branch variables frozen.
    main_only_step = jit_step(model=model.clone(branches=()), loss_weights={'logits': weights['logits']},
                              frozen=tuple(branch_names))

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  base_rng = jax.random.PRNGKey(t.seed)
  skipped = {'train': input_pipeline.SkipCounter(), 'eval': input_pipeline.SkipCounter()}
  train_iter = input_pipeline.train_batches(
      config, local_batch_size=local_batch, start_step=int(state.step), seed=t.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      skipped=skipped['train'])
  eval_local = sharding.local_batch_size(config.eval.batch_size, 'eval.batch_size')
  heads_fn = training_model_heads(model)

  def save(step: int) -> None:
    nonlocal last_saved
    checkpointer.save(step, state, {'step': step, 'epoch': step / steps_per_epoch})
    last_saved = step

  history, window_start = [], int(state.step)
  start_step = int(state.step)
  logging.info('Training %s for %d steps (%d per epoch) from step %d on %d device(s).',
               config.model.name, num_steps, steps_per_epoch, start_step, jax.device_count())
  with checkpointing.PreemptionWatch() as preemption:
    for step in range(start_step, num_steps):
      fn = main_only_step if removal_step is not None and step >= removal_step else full_step
      state, metrics = fn(state, sharding.shard_batch(next(train_iter), mesh), base_rng,
                          teacher_variables)
      history.append(metrics)
      progress(step + 1)
      done = step + 1 == num_steps
      preempted = preemption.reached(step + 1)
      save_now = (step + 1) % t.checkpoint_every_steps == 0 or done or preempted
      if (step + 1) % t.log_every_steps == 0 or save_now or (step + 1) % eval_every == 0:
        _check_finite(history, window_start, t.on_nonfinite, last_saved)
        train_summary = _summarise(history)
        writer.write_scalars(step + 1, {**{f'train/{k}': v for k, v in train_summary.items()},
                                        **host_memory(), **_skipped_records(skipped)})
        history, window_start = [], step + 1
      if (step + 1) % eval_every == 0 or done:
        eval_metrics = evaluate(
            {'params': state.params, 'batch_stats': state.batch_stats}, heads_fn,
            input_pipeline.eval_batches(config, local_batch_size=eval_local,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count(),
                                        skipped=skipped['eval']), mesh)
        _log_eval(writer, workdir, step + 1, steps_per_epoch, eval_metrics, train_summary)
      if save_now:
        save(step + 1)
      if preempted:
        logging.warning('Preempted (SIGTERM) at step %d; checkpoint saved. Rerun the same command '
                        'to resume.', step + 1)
        break
  writer.flush()
  checkpointer.close()
  return state


def _log_eval(writer: Any, workdir: str, step: int, steps_per_epoch: int,
              eval_metrics: Mapping[str, Mapping[str, float]], train_summary: Mapping[str, float]
              ) -> None:
  writer.write_scalars(step, {f'eval/{h}/{m}': v for h, ms in eval_metrics.items()
                              for m, v in ms.items()})
  line = ', '.join(f'{h} top1 {m["top1"]:.4f}' for h, m in eval_metrics.items())
  logging.info('Eval at step %d (epoch %.2f): %s', step, step / steps_per_epoch, line)
  if jax.process_index() == 0:
    record = {'step': step, 'epoch': step / steps_per_epoch, 'time': time.time(),
              'eval': eval_metrics, 'train': _nested(train_summary)}
    with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')


def _abstract_initial_state(config: ml_collections.ConfigDict, mesh: Any) -> TrainState:
  """Shapes and shardings of a fresh training state of `config` (nothing is computed)."""
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_steps=1)
  init = state_init_fn(models.create(config.model), tx, config.data.image_size)
  replicated = sharding.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(init, jax.random.PRNGKey(0)))


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
  """{'params', 'batch_stats'} of the training model from WORKDIR's latest checkpoint."""
  mesh = sharding.create_mesh()
  checkpointer = checkpointing.Checkpointer(workdir)
  try:
    state, _ = checkpointer.restore(_abstract_initial_state(config, mesh))
  finally:
    checkpointer.close()
  return {'params': state.params, 'batch_stats': state.batch_stats}


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        export_dir: Optional[str] = None) -> Dict[str, Dict[str, float]]:
  """Evaluates WORKDIR's latest checkpoint (every head) or an export (main head) on the eval split."""
  from dsop_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  input_pipeline.check_prepared(config)
  mesh = sharding.create_mesh()
  if export_dir:
    module, variables = export.load(export_dir)
    heads_fn = plain_model_heads(module)
  else:
    variables = restore_variables(config, workdir)
    heads_fn = training_model_heads(models.create(config.model))
  variables = jax.device_put(variables, sharding.replicated(mesh))
  batches = input_pipeline.eval_batches(
      config, local_batch_size=sharding.local_batch_size(config.eval.batch_size, 'eval.batch_size'),
      process_index=jax.process_index(), process_count=jax.process_count())
  return evaluate(variables, heads_fn, batches, mesh)
