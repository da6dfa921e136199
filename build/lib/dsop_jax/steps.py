"""The pure training and evaluation steps of DSoP-Net and the training state they carry.

`train_step` applies the model, assembles Eq. 1 with `losses.dsop_loss`, updates the state and returns
per-head metrics; it never reads globals or talks to the host. A step whose loss is not finite in any
head leaves the state untouched and reports it, so the host can stop (or skip, per config) before a
bad state reaches a checkpoint. `eval_step` and `evaluate` sum per-head metrics over masked eval
batches. Nothing here imports TensorFlow or clu or touches files: `dsop_jax.benchmark` runs these
steps on accelerator hosts that have neither.
"""

import functools
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dsop_jax import losses
from dsop_jax import models
from dsop_jax import optim
from dsop_jax import sharding


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
    was rejected because a loss, the gradient or the new state was not finite), 'nonfinite_state'
    (1.0 when the new parameters, BN statistics or optimiser state were), and 'learning_rate'.
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
  # A finite loss and gradient can still give a non-finite state (float32 overflow in the BN
  # statistics of huge activations, or in an update): the new state must be finite as well.
  state_finite = _all_finite((new_params, new_stats, new_opt_state))
  finite = jnp.logical_and(finite, state_finite)
  # A rejected step leaves parameters, statistics and optimiser state as they were.
  new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state,
                                     state.replace(step=state.step + 1))
  metrics = head_metrics(heads=losses.head_logits(outputs), labels=batch['label'], terms=terms)
  metrics['loss'] = total
  if 'distill_soft' in terms:
    metrics['distill_soft'] = terms['distill_soft']
  metrics['nonfinite'] = 1.0 - finite.astype(jnp.float32)
  metrics['nonfinite_state'] = 1.0 - state_finite.astype(jnp.float32)
  if learning_rate_fn is not None:
    metrics['learning_rate'] = learning_rate_fn(state.step)
  return new_state, metrics


def _all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point value in `tree` is finite, as one reduction over all of them (a
  reduction per leaf made the ResNet-50 step's compilation about 3x slower on a CPU)."""
  leaves = [x.ravel().astype(jnp.float32) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.isfinite(jnp.concatenate(leaves))) if leaves else jnp.asarray(True)


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


def abstract_initial_state(config: ml_collections.ConfigDict, mesh: Any) -> TrainState:
  """Shapes and shardings of a fresh training state of `config` (nothing is computed)."""
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_steps=1)
  init = state_init_fn(models.create(config.model), tx, config.data.image_size)
  replicated = sharding.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(init, jax.random.PRNGKey(0)))
