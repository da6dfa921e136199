"""Training and evaluation of DSoP-Net: `train_and_evaluate(config, workdir)` and its checks.

`train_and_evaluate` validates the config before anything compiles, then drives everything around
the pure steps of `steps.py`: data, the mesh, checkpoints and resume, the training policies of
Section V-C, metrics and evaluation; the workdir it writes follows `runs.py`.

Training policies (`config.train.policy`):
- 'one_phase': backbone and branches trained jointly from scratch (the paper's default);
- 'early_removal': all branches removed at `config.train.remove_branches_at_epoch`; training goes on
  with the main head alone (Section V-C: epochs 30, 45, 60);
- 'two_phase': the backbone is loaded from `config.train.backbone_checkpoint` (an export directory or a
  training workdir) and frozen, parameters and BN statistics; only the branches are trained.
"""

import contextlib
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import ml_collections
import numpy as np

from dsop_jax import paths
from dsop_jax.data import datasets
from dsop_jax.data import input_pipeline
from dsop_jax.deploy import artifact
from dsop_jax.models import dsop
from dsop_jax.models import registry
from dsop_jax.training import checkpointing
from dsop_jax.training import export
from dsop_jax.training import losses
from dsop_jax.training import monitoring
from dsop_jax.training import optim
from dsop_jax.training import pretrained
from dsop_jax.training import restoring
from dsop_jax.training import runs
from dsop_jax.training import sharding
from dsop_jax.training import steps


POLICIES = ('one_phase', 'early_removal', 'two_phase')


def _validate(config: ml_collections.ConfigDict) -> Optional[Dict[str, np.ndarray]]:
  """Every check that can fail, before anything is compiled: each section once, by its owner
  (config.train, config.eval and config.distill here). Returns the state dict of
  config.model.init_from that `pretrained.validate` read, or None."""
  registry.validate_model_config(config.model)
  registry.validate_loss_config(config)
  optim.validate_optim_config(config)
  t = config.train
  if t.policy not in POLICIES:
    raise ValueError(f'config.train.policy = {t.policy!r} is invalid: allowed: {", ".join(POLICIES)}.')
  if not 0 < t.num_epochs < float('inf'):
    raise ValueError(f'config.train.num_epochs = {t.num_epochs!r} is invalid: must be a finite '
                     'number > 0.')
  if t.policy == 'early_removal' and not 0 < t.remove_branches_at_epoch < t.num_epochs:
    raise ValueError(f'config.train.remove_branches_at_epoch = {t.remove_branches_at_epoch!r} is '
                     f'invalid: must lie in (0, num_epochs = {t.num_epochs}).')
  if t.policy == 'two_phase' and not pretrained.source_of(config)[1]:
    raise ValueError("config.train.backbone_checkpoint = '' is invalid: two_phase training needs "
                     'the trained backbone: an export directory or training workdir here, or '
                     'config.model.init_from (also a torchvision/timm safetensors file).')
  state_dict = pretrained.validate(config)
  for field in ('keep_best', 'async_checkpointing', 'checkpoint_every_epoch', 'tensorboard'):
    if not isinstance(t[field], bool):
      raise ValueError(f'config.train.{field} = {t[field]!r} is invalid: allowed: True, False.')
  for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    if not isinstance(t[field], int) or t[field] < 1:
      raise ValueError(f'config.train.{field} = {t[field]!r} is invalid: must be an integer >= 1.')
  if not t.eval_every_epochs > 0:
    raise ValueError(f'config.train.eval_every_epochs = {t.eval_every_epochs!r} is invalid: '
                     'must be > 0.')
  window = tuple(t.profile_steps)
  if window and (len(window) != 2 or not all(isinstance(n, int) for n in window)
                 or not 0 <= window[0] < window[1]):
    raise ValueError(f'config.train.profile_steps = {window!r} is invalid: give (first, last) '
                     'with 0 <= first < last (steps first..last-1 are traced), or () for none.')
  if not isinstance(t.seed, int) or t.seed < 0:
    raise ValueError(f'config.train.seed = {t.seed!r} is invalid: must be an integer >= 0.')
  distill = config.distill
  if distill.teacher:
    if not paths.path(distill.teacher, 'config.distill.teacher').is_dir():
      raise ValueError(f'config.distill.teacher = {distill.teacher!r} is invalid: not a directory '
                       '(give an export directory or a training workdir).')
    if registry.branch_specs(config.model):
      raise ValueError('config.distill.teacher is set but the model has branches: distillation '
                       'trains a plain student (add the :plain config option).')
    if config.loss.mixup_alpha or config.loss.cutmix_alpha:
      raise ValueError('config.loss.mixup_alpha / cutmix_alpha are set with config.distill.teacher:'
                       ' distillation trains on unmixed batches; set them to 0.')
    if not distill.temperature > 0:
      raise ValueError(f'config.distill.temperature = {distill.temperature!r} is invalid: must be '
                       '> 0.')
    if not 0 <= distill.soft_weight <= 1:
      raise ValueError(f'config.distill.soft_weight = {distill.soft_weight!r} is invalid: must lie '
                       'in [0, 1].')
  if t.on_nonfinite not in ('stop', 'skip'):
    raise ValueError(f'config.train.on_nonfinite = {t.on_nonfinite!r} is invalid: allowed: stop, skip.')
  skips = t.max_consecutive_skips
  if not isinstance(skips, int) or isinstance(skips, bool) or skips < 1:
    raise ValueError(f'config.train.max_consecutive_skips = {skips!r} is invalid: must be an '
                     'integer >= 1.')
  sharding.local_batch_size(t.batch_size, 'train.batch_size')
  sharding.local_batch_size(config.eval.batch_size, 'eval.batch_size')
  group = config.model.bn_group_size
  if 0 < group < t.batch_size and t.batch_size % group:
    raise ValueError(f'config.model.bn_group_size = {group} is invalid: it must divide '
                     f'config.train.batch_size ({t.batch_size}), or be 0 (the whole batch).')
  input_pipeline.validate_data_config(config)
  runs.allowed_resume_changes(config)
  examples = datasets.num_examples(config, datasets.dataset_info(config).train_split)
  if t.batch_size > examples:
    raise ValueError(f'config.train.batch_size = {t.batch_size} is invalid: the training split of '
                     f'{config.data.dataset} has {examples} examples, so an epoch would have no '
                     'step; use a batch of at most that many.')
  if not round(t.num_epochs * (examples // t.batch_size)):
    raise ValueError(f'config.train.num_epochs = {t.num_epochs!r} is invalid: it gives 0 training '
                     f'steps at {examples // t.batch_size} steps per epoch.')
  return state_dict


def _load_backbone(state: steps.TrainState, config: ml_collections.ConfigDict, mesh: Any,
                   state_dict: Optional[Mapping[str, np.ndarray]]) -> steps.TrainState:
  """The backbone's variables from `pretrained.source_of(config)` (fine-tuning's init_from, or
  two-phase training's trained backbone; `state_dict`: what `_validate` read of a safetensors
  file); the branches keep their fresh values."""
  fresh = {'params': state.params[dsop.BACKBONE], 'batch_stats': state.batch_stats[dsop.BACKBONE]}
  backbone, _ = pretrained.load(config, fresh, state_dict)
  backbone = jax.device_put(backbone, sharding.replicated(mesh))
  state = state.replace(params={**state.params, dsop.BACKBONE: backbone['params']},
                        batch_stats={**state.batch_stats, dsop.BACKBONE: backbone['batch_stats']})
  if getattr(state, 'ema', None) is not None:  # The moving average starts at the loaded weights.
    state = state.replace(ema={'params': state.params, 'batch_stats': state.batch_stats})
  return state


def _abstract_state(state: steps.TrainState) -> steps.TrainState:
  return jax.tree.map(
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


def _check_finite(history: Sequence[Mapping[str, jax.Array]], first_step: int, policy: str,
                  last_saved: Optional[int], consecutive: int = 0,
                  limit: Optional[int] = None) -> int:
  """Raises FloatingPointError naming the heads when a step in `history` was rejected ('stop'),
  or when more than `limit` steps in a row were ('skip'). Returns the rejected steps in a row at
  the end of `history`, counting `consecutive` before it."""
  fetched = jax.device_get(list(history))
  for offset, metrics in enumerate(fetched):
    consecutive = consecutive + 1 if metrics['nonfinite'] else 0
    if limit is not None and consecutive > limit:
      raise FloatingPointError(
          f'{consecutive} steps in a row were rejected up to step {first_step + offset + 1} '
          f'(config.train.max_consecutive_skips = {limit}): training is not recovering. The last '
          f'checkpoint (step {last_saved}) is intact; lower optim.learning_rate and rerun.')
    if metrics['nonfinite']:
      bad = sorted(k.rsplit('/', 1)[0] for k, v in metrics.items()
                   if k.endswith('/loss') and not np.isfinite(v))
      what = (f'loss in head(s) {bad}' if bad else
              'gradient or updated state (parameters, BN statistics, optimiser state; every head '
              'loss was finite)' if metrics.get('nonfinite_state') else
              'gradient (every head loss was finite)')
      message = f'Non-finite {what} at step {first_step + offset + 1}; the update was rejected.'
      if policy == 'stop':
        raise FloatingPointError(f'{message} Training stopped; the last checkpoint (step '
                                 f'{last_saved}) is intact.')
      logging.warning('%s Skipping it (config.train.on_nonfinite = skip).', message)
  return consecutive


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains (resuming from WORKDIR if it holds a checkpoint), evaluates and checkpoints.

  Writes WORKDIR/config.json, WORKDIR/checkpoints/, TensorBoard summaries, and WORKDIR/metrics.jsonl
  with one JSON object per evaluation: {"step", "epoch", "eval": {head: {"top1", "top5", "loss"}},
  "train": {...}}. The workdir is held by this run (`runs.workdir_lock`): a second training run on
  it is refused, naming this one.
  """
  paths.path(workdir, '--workdir')  # A URL of a scheme that cannot hold checkpoints is refused.
  state_dict = [_validate(config)]  # A list that the run empties: nothing holds it after.
  with runs.workdir_lock(workdir):
    return _train_and_evaluate(config, workdir, state_dict)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        state_dict: List[Optional[Mapping[str, np.ndarray]]]
                        ) -> steps.TrainState:
  """`state_dict`: [the state dict of config.model.init_from, or None], emptied once used (a
  large state dict is not held through training)."""
  config = input_pipeline.with_dataset_stats(config)  # Recorded in config.json.
  mesh = sharding.create_mesh()
  teacher, teacher_variables = None, None  # Knowledge distillation (Table II baselines).
  distill = config.distill
  if distill.teacher:
    teacher, teacher_variables = export.load_first_order(distill.teacher)
    if teacher.num_classes != config.model.num_classes:
      raise ValueError(f'config.distill.teacher = {distill.teacher!r} has {teacher.num_classes} '
                       f'classes; the student has {config.model.num_classes}.')
    teacher_variables = jax.device_put(teacher_variables, sharding.replicated(mesh))
    logging.info('Distilling %s into the main head (T=%g, soft weight %g).', distill.teacher,
                 distill.temperature, distill.soft_weight)
  t = config.train
  local_batch = sharding.local_batch_size(t.batch_size)
  steps_per_epoch = input_pipeline.steps_per_epoch(config, t.batch_size)
  num_steps = optim.num_train_steps(config, steps_per_epoch)
  eval_every = max(1, int(round(t.eval_every_epochs * steps_per_epoch)))
  removal_step = (int(round(t.remove_branches_at_epoch * steps_per_epoch))
                  if t.policy == 'early_removal' else None)

  paths.path(workdir).mkdir(parents=True, exist_ok=True)
  keep_best = t.keep_best
  checkpointer = checkpointing.Checkpointer(workdir, t.keep_checkpoints, keep_best=keep_best,
                                            async_saves=t.async_checkpointing)
  last_saved = checkpointer.latest_step()
  if last_saved is not None:  # Before anything is compiled or restored.
    runs.check_resume_config(config, workdir)

  model = registry.create(config.model)
  weights = registry.loss_weights(config)
  info = datasets.dataset_info(config)  # Its mean and std normalise the uint8 batches on device.
  lr_fn = optim.learning_rate_schedule(config, steps_per_epoch, num_steps)
  tx = optim.create_optimizer(config, steps_per_epoch, num_steps)
  state = steps.init_state(model, tx, config, mesh)
  branch_names = [k for k in state.params if k != dsop.BACKBONE]

  if last_saved is not None:
    state, _ = checkpointer.restore(_abstract_state(state))  # Skips unreadable checkpoints.
    last_saved = int(state.step)
    logging.info('Resuming from step %d in %s', last_saved, workdir)
  elif pretrained.source_of(config)[1]:
    state = _load_backbone(state, config, mesh, state_dict[0])
  state_dict.clear()
  runs.write_config(config, workdir, resumed_at=last_saved)
  runs.write_class_names(config, workdir)

  def jit_step(module: Any, loss_weights: Dict[str, float], frozen: Sequence[str]) -> Any:
    if teacher is None:
      objective = losses.dsop_objective(module, loss_weights, config.loss.label_smoothing,
                                        config.loss.mixup_alpha,
                                        config.loss.cutmix_alpha)
    else:  # A branch-less student (checked): the main head's distillation loss.
      objective = losses.distillation_objective(module, teacher, distill.temperature,
                                                distill.soft_weight)
    return jax.jit(steps.make_train_step(objective, tx, hessian=optim.needs_hessian(config),
                                         frozen=frozen, learning_rate_fn=lr_fn,
                                         ema_decay=config.optim.ema_decay,
                                         ema_every=optim.accumulate_steps(config),
                                         input_stats=(info.mean, info.std)),
                   donate_argnums=(0,))

  full_step = jit_step(model, weights, (dsop.BACKBONE,) if t.policy == 'two_phase' else ())
  main_only_step = None
  if removal_step is not None:  # Branches detached: the backbone alone, branch variables frozen.
    main_only_step = jit_step(model.clone(branches=()), {'logits': weights['logits']},
                              tuple(branch_names))

  writer = metric_writers.create_default_writer(workdir if t.tensorboard else None,
                                                just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  base_rng = jax.random.key(t.seed)
  skipped = {'train': datasets.SkipCounter(), 'eval': datasets.SkipCounter()}
  train_iter = input_pipeline.train_batches(
      config, local_batch_size=local_batch, start_step=int(state.step), seed=t.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      skipped=skipped['train'])
  eval_local = sharding.local_batch_size(config.eval.batch_size, 'eval.batch_size')
  heads_fn = steps.training_model_heads(model)
  ema_heads_fn = steps.main_head(model) if steps.uses_ema(config) else None

  def save(step: int, top1: Optional[float]) -> None:
    nonlocal last_saved
    checkpointer.save(step, state, {'step': step, 'epoch': step / steps_per_epoch}, top1)
    last_saved = step

  history, window_start, rejected_in_a_row = [], int(state.step), 0
  start_step = int(state.step)
  # Wall seconds of training so far, over every segment of a resumed run (metrics' train_seconds).
  earlier = runs.evaluation_at(workdir, start_step) if start_step else None
  clock = (earlier or {}).get('train_seconds', 0.0) - time.monotonic()
  logging.info('Training %s for %d steps (%d per epoch) from step %d on %d device(s).',
               config.model.name, num_steps, steps_per_epoch, start_step, jax.device_count())
  profiler = monitoring.Profiler(tuple(t.profile_steps), os.fspath(paths.path(workdir) / 'profile'))
  device_iter = sharding.device_batches(train_iter, mesh)  # Two batches ahead on the devices.
  # Closing the checkpointer waits for a background save, also when training stops on an error.
  with checkpointing.PreemptionWatch() as preemption, profiler, contextlib.closing(checkpointer):
    for step in range(start_step, num_steps):
      fn = main_only_step if removal_step is not None and step >= removal_step else full_step
      profiler.before(step)
      state, metrics = fn(state, next(device_iter), base_rng, teacher_variables)
      profiler.after(step, state)
      history.append(metrics)
      progress(step + 1)
      done = step + 1 == num_steps
      preempted = preemption.reached(step + 1)
      evaluate_now = (step + 1) % eval_every == 0 or done
      end_of_epoch = t.checkpoint_every_epoch and (step + 1) % steps_per_epoch == 0
      save_now = ((step + 1) % t.checkpoint_every_steps == 0 or done or preempted
                  or (keep_best and evaluate_now) or end_of_epoch)
      if (step + 1) % t.log_every_steps == 0 or save_now or evaluate_now:
        rejected_in_a_row = _check_finite(history, window_start, t.on_nonfinite, last_saved,
                                          rejected_in_a_row, t.max_consecutive_skips)
        train_summary = _summarise(history)
        writer.write_scalars(step + 1, {**{f'train/{k}': v for k, v in train_summary.items()},
                                        **monitoring.host_memory(),
                                        **monitoring.skipped_records(skipped)})
        history, window_start = [], step + 1
      eval_metrics = None
      if evaluate_now:
        eval_batches = lambda counter: input_pipeline.eval_batches(  # noqa: E731
            config, local_batch_size=eval_local, process_index=jax.process_index(),
            process_count=jax.process_count(), skipped=counter)
        eval_metrics = steps.evaluate(
            {'params': state.params, 'batch_stats': state.batch_stats}, heads_fn,
            eval_batches(skipped['eval']), mesh, (info.mean, info.std))
        if ema_heads_fn is not None:  # The moving average's main head, as a head of its own.
          eval_metrics['ema'] = steps.evaluate(state.ema, ema_heads_fn, eval_batches(None),
                                               mesh, (info.mean, info.std))['logits']
        _log_eval(writer, workdir, step + 1, steps_per_epoch, eval_metrics, train_summary,
                  clock + time.monotonic())
      if save_now:
        save(step + 1, None if eval_metrics is None else eval_metrics['logits']['top1'])
      if preempted:
        logging.warning('Preempted (SIGTERM) at step %d; checkpoint saved. Rerun the same command '
                        'to resume.', step + 1)
        break
  writer.flush()
  return state


def _log_eval(writer: Any, workdir: str, step: int, steps_per_epoch: int,
              eval_metrics: Mapping[str, Mapping[str, float]], train_summary: Mapping[str, float],
              train_seconds: float) -> None:
  writer.write_scalars(step, {f'eval/{h}/{m}': v for h, ms in eval_metrics.items()
                              for m, v in ms.items()})
  line = ', '.join(f'{h} top1 {m["top1"]:.4f}' for h, m in eval_metrics.items())
  logging.info('Eval at step %d (epoch %.2f): %s', step, step / steps_per_epoch, line)
  runs.append_metrics(workdir, {'step': step, 'epoch': step / steps_per_epoch, 'time': time.time(),
                                'train_seconds': round(train_seconds, 3), 'eval': eval_metrics,
                                'train': _nested(train_summary)})


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        export_dir: Optional[str] = None, step: Optional[int] = None,
                        best: bool = False, ema: bool = False) -> Dict[str, Dict[str, float]]:
  """Evaluates WORKDIR's latest checkpoint (or `step`'s, or with `best` the best evaluated one;
  every head, or with `ema` its moving average's main head) or an export (main head) on the eval
  split."""
  if export_dir:  # The dataset's images prepared as the export says, its classes checked.
    config = export.data_config_for(config, export_dir)
  else:
    registry.validate_model_config(config.model)
    input_pipeline.validate_data_config(config)
  mesh = sharding.create_mesh()
  if export_dir:
    module, variables = artifact.load(export_dir)
    heads_fn = steps.plain_model_heads(module)
  else:
    variables = restoring.restore_variables(config, workdir, step=step, best=best, ema=ema)
    model = registry.create(config.model)
    heads_fn = steps.main_head(model) if ema else steps.training_model_heads(model)
  variables = jax.device_put(variables, sharding.replicated(mesh))
  batches = input_pipeline.eval_batches(
      config, local_batch_size=sharding.local_batch_size(config.eval.batch_size, 'eval.batch_size'),
      process_index=jax.process_index(), process_count=jax.process_count())
  info = datasets.dataset_info(config)
  return steps.evaluate(variables, heads_fn, batches, mesh, (info.mean, info.std))

