"""The pure training and evaluation steps of DSoP-Net and the training state they carry.

`train_step` differentiates an objective built outside it (`losses.dsop_objective` for Eq. 1, or
`losses.distillation_objective`), updates the state with the optimiser (subtrees held still by
`optim.freeze`) and returns per-head metrics; it never reads globals or talks to the host.
`make_train_step` binds everything static before jit. A step whose loss is not finite in any
head leaves the state untouched and reports it, so the host can stop (or skip, per config) before a
bad state reaches a checkpoint. `eval_step` and `evaluate` sum per-head metrics over masked eval
batches. Nothing here imports TensorFlow or clu or touches files: `dsop_jax.benchmark` runs these
steps on accelerator hosts that have neither.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dsop_jax.models import registry
from dsop_jax.training import losses
from dsop_jax.training import optim
from dsop_jax.training import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class EMATrainState(TrainState):
  """A TrainState that also holds an exponential moving average of the variables,
  {'params', 'batch_stats'} (config.optim.ema_decay > 0); a subclass, so the checkpoints of runs
  without it keep TrainState's structure."""
  ema: Any = None


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


def normalise_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]
                     ) -> jax.Array:
  """uint8 pixels (the training pipeline's) -> float32 (pixel - mean) / std per channel, on the
  device; float images are taken as already normalised and returned as they are.

  Bit-identical to normalising on the host (IEEE division, as TensorFlow and NumPy do it): XLA
  would otherwise divide by the broadcast per-channel std as a multiplication by its reciprocal,
  1 ulp off for a third of the pixels, and runs would no longer reproduce those of the host
  pipeline. The barrier keeps the full-size divisor, a negligible cost beside the network."""
  if images.dtype != jnp.uint8:
    return images
  centred = images.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)
  divisor = jax.lax.optimization_barrier(
      jnp.broadcast_to(jnp.asarray(std, jnp.float32), centred.shape))
  return centred / divisor


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """Everything a train step does besides its arguments, fixed before `jax.jit`.

  Attributes:
    loss_and_grads: `losses.with_gradients` of the objective.
    tx: the optimiser (`optim.freeze` holds subtrees still).
    frozen_batch_stats: top-level BatchNorm-statistics subtrees kept as they are (the backbone in
      two-phase training, which runs in training mode under the branches); subtrees the model did
      not update (branches after early removal) are kept too.
    learning_rate_fn: reported in the metrics when given.
    ema_decay: an EMATrainState's average moves to the new variables by 1 - ema_decay at each
      optimiser update (params and BN statistics alike; a rejected step leaves it as it was).
    ema_every: training steps per optimiser update (gradient accumulation): the average moves on
      the steps that update the parameters, so its decay is per update, as without accumulation.
    input_stats: (mean, std) that uint8 images are normalised with (`normalise_images`).
  """
  loss_and_grads: Callable[..., Tuple[Any, ...]]
  tx: optax.GradientTransformation
  frozen_batch_stats: Tuple[str, ...] = ()
  learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None
  ema_decay: float = 0.0
  ema_every: int = 1
  input_stats: Tuple[Tuple[float, ...], Tuple[float, ...]] = ((0.0,) * 3, (1.0,) * 3)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array,
               loss_args: Any = None, *, options: StepOptions
               ) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimiser step. Build it with `make_train_step`, which binds `options`.

  Args:
    state: the training state.
    batch: {'image': (B, H, W, 3), 'label': (B,)}.
    rng: base key; the step's dropout key is derived from it and the step, so resuming replays it.
    loss_args: the arrays the objective reads besides the model's variables (the distillation
      teacher's variables), or None.
    options: what the step does besides (`StepOptions`).

  Returns:
    (new state, metrics): 'loss', per-head '<head>/loss|top1|top5', 'nonfinite' (1.0 when the step
    was rejected because a loss, the gradient or the new state was not finite), 'nonfinite_state'
    (1.0 when the new parameters, BN statistics or optimiser state were), and 'learning_rate'.
  """
  dropout_rng = jax.random.fold_in(rng, state.step)
  batch = {**batch, 'image': normalise_images(batch['image'], *options.input_stats)}
  total, (outputs, new_stats, terms), grads, extra_args = options.loss_and_grads(
      state.params, state.batch_stats, batch, dropout_rng, loss_args)
  updates, new_opt_state = options.tx.update(grads, state.opt_state, state.params, **extra_args)
  new_params = optax.apply_updates(state.params, updates)
  new_stats = {k: (old if k in options.frozen_batch_stats or k not in new_stats else new_stats[k])
               for k, old in state.batch_stats.items()}
  # Every loss term, the gradient, and the optimiser's extra arguments must be finite (a
  # non-finite H z would poison AdaHessian's second moment for good).
  finite = jnp.all(jnp.stack([jnp.isfinite(t) for t in terms.values()] + [
      jnp.isfinite(optax.tree.norm(tree)) for tree in (grads, *extra_args.values())]))
  new_state = state.replace(step=state.step + 1, params=new_params, batch_stats=new_stats,
                            opt_state=new_opt_state)
  if isinstance(state, EMATrainState):
    moved = jax.tree.map(lambda average, new: options.ema_decay * average + (1.0 - options.ema_decay) * new,
                         state.ema, {'params': new_params, 'batch_stats': new_stats})
    updated = (state.step + 1) % options.ema_every == 0
    new_state = new_state.replace(ema=jax.tree.map(lambda m, a: jnp.where(updated, m, a), moved,
                                                   state.ema))
  # A finite loss and gradient can still give a non-finite state (float32 overflow in the BN
  # statistics of huge activations, or in an update): the new state must be finite as well.
  state_finite = _all_finite((new_params, new_stats, new_opt_state))
  finite = jnp.logical_and(finite, state_finite)
  # A rejected step leaves parameters, statistics and optimiser state as they were.
  new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state,
                                     state.replace(step=state.step + 1))
  metrics = head_metrics(heads=losses.head_logits(outputs), labels=batch['label'], terms=terms)
  metrics['loss'] = total
  if 'distill_soft' in terms:
    metrics['distill_soft'] = terms['distill_soft']
  metrics['nonfinite'] = 1.0 - finite.astype(jnp.float32)
  metrics['nonfinite_state'] = 1.0 - state_finite.astype(jnp.float32)
  if options.learning_rate_fn is not None:
    metrics['learning_rate'] = options.learning_rate_fn(state.step)
  return new_state, metrics


def make_train_step(objective: losses.Objective, tx: optax.GradientTransformation, *,
                    hessian: bool = False, frozen: Sequence[str] = (),
                    learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
                    ema_decay: float = 0.0, ema_every: int = 1,
                    input_stats: Tuple[Sequence[float], Sequence[float]] = ((0.0,) * 3, (1.0,) * 3)
                    ) -> Callable[..., Tuple[TrainState, Dict[str, jax.Array]]]:
  """`train_step(state, batch, rng[, loss_args]) -> (state, metrics)` on `objective` (built in
  losses.py) with everything static bound, ready to jit.

  Args:
    objective: `losses.dsop_objective` or `losses.distillation_objective`.
    tx: the optimiser.
    hessian: give the optimiser a Hessian-diagonal estimate (AdaHessian, `optim.needs_hessian`).
    frozen: top-level variable subtrees (e.g. 'backbone' in two-phase training, or every branch
      after early removal) whose parameters and BN statistics are kept as they are: `optim.freeze`
      holds their parameters and optimiser state.
    learning_rate_fn: reported in the metrics when given.
    ema_decay, ema_every: the decay of an EMATrainState's moving average per optimiser update, and
      the training steps per update (`train_step`).
    input_stats: the dataset's (mean, std) for uint8 images (`input_pipeline.train_batches`).
  """
  return functools.partial(train_step, options=StepOptions(
      loss_and_grads=losses.with_gradients(objective, hessian), tx=optim.freeze(tx, frozen),
      frozen_batch_stats=tuple(frozen), learning_rate_fn=learning_rate_fn, ema_decay=ema_decay,
      ema_every=ema_every, input_stats=(tuple(input_stats[0]), tuple(input_stats[1]))))


def _all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point value in `tree` is finite, as one reduction over all of them (a
  reduction per leaf made the ResNet-50 step's compilation about 3x slower on a CPU)."""
  leaves = [x.ravel().astype(jnp.float32) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.isfinite(jnp.concatenate(leaves))) if leaves else jnp.asarray(True)


def eval_step(variables: Any, batch: Mapping[str, jax.Array], *,
              heads_fn: Callable[[Any, jax.Array], Mapping[str, jax.Array]],
              input_stats: Optional[Tuple[Sequence[float], Sequence[float]]] = None
              ) -> Dict[str, jax.Array]:
  """Sums over the real (mask=1) examples of a batch: per-head loss, top-1 and top-5 hits, count.
  uint8 images (the pipeline's) are normalised here with `input_stats` = (mean, std)."""
  images = batch['image']
  if images.dtype == jnp.uint8:
    if input_stats is None:
      raise ValueError('uint8 eval images need input_stats (mean, std) to be normalised.')
    images = normalise_images(images, *input_stats)
  heads = heads_fn(variables, images)
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


def main_head(model: Any) -> Callable[[Any, jax.Array], Mapping[str, jax.Array]]:
  """The training model's main head only, {'logits': ...}."""
  return lambda variables, x: {'logits': model.apply(variables, x, train=False)['logits']}


def plain_model_heads(model: Any) -> Callable[[Any, jax.Array], Mapping[str, jax.Array]]:
  return lambda variables, x: {'logits': model.apply(variables, x, train=False)[0]}


@functools.lru_cache(maxsize=8)
def _jitted_eval_step(heads_fn: Callable[..., Mapping[str, jax.Array]],
                      input_stats: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]
                      ) -> Callable[..., Any]:
  """One jitted eval step per heads function and statistics, so evaluations do not recompile."""
  return jax.jit(functools.partial(eval_step, heads_fn=heads_fn, input_stats=input_stats))


def evaluate(variables: Any, heads_fn: Callable[..., Mapping[str, jax.Array]],
             batches: Iterable[Mapping[str, np.ndarray]], mesh: Any,
             input_stats: Optional[Tuple[Sequence[float], Sequence[float]]] = None
             ) -> Dict[str, Dict[str, float]]:
  """{head: {'loss', 'top1', 'top5'}} over every eval example (means); uint8 batches (the eval
  pipeline's) are normalised on the device with `input_stats` = (mean, std), as in training."""
  stats = None if input_stats is None else tuple(tuple(map(float, v)) for v in input_stats)
  step = _jitted_eval_step(heads_fn, stats)
  totals = None
  for batch in batches:
    sums = step(variables, sharding.shard_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals.pop('count'))
  result: Dict[str, Dict[str, float]] = {}
  for key, value in totals.items():
    head, metric = key.rsplit('/', 1)
    result.setdefault(head, {})[metric] = float(value) / count
  return result


def state_init_fn(model: Any, tx: optax.GradientTransformation, image_size: int,
                  ema: bool = False) -> Callable[[jax.Array], TrainState]:
  """rng -> a fresh TrainState (variables initialised on a 1-image batch), an EMATrainState whose
  average starts at them with `ema`; jit it with `registry.jit_init`."""

  def init(rng):
    variables = model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
    params, stats = variables['params'], variables.get('batch_stats', {})
    fields = dict(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                  opt_state=tx.init(params))
    if not ema:
      return TrainState(**fields)
    return EMATrainState(**fields, ema={'params': params, 'batch_stats': stats})

  return init


def uses_ema(config: ml_collections.ConfigDict) -> bool:
  """Whether the training state keeps a moving average of the variables (config.optim.ema_decay)."""
  return config.optim.ema_decay > 0


def init_state(model: Any, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
               mesh: Any) -> TrainState:
  """A fresh TrainState of `model` (seed config.train.seed), replicated over the mesh."""
  init = state_init_fn(model, tx, config.data.image_size, uses_ema(config))
  return registry.jit_init(init, out_shardings=sharding.replicated(mesh))(
      jax.random.key(config.train.seed))


def abstract_initial_state(config: ml_collections.ConfigDict, mesh: Any) -> TrainState:
  """Shapes and shardings of a fresh training state of `config` (nothing is computed)."""
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_steps=1)
  init = state_init_fn(registry.create(config.model), tx, config.data.image_size, uses_ema(config))
  replicated = sharding.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(init, jax.random.key(0)))
