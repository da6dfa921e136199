"""Optimisers and learning-rate schedules of the paper's experiments (Sections V-B, V-D, Table IX).

- SGD with momentum 0.9 (optionally Nesterov) and PyTorch-style coupled weight decay (wd * w added to
  the gradient before momentum, on every parameter), as in the paper's PyTorch runs.
- RAdam (Table IX) as its official code (github.com/LiyuanLucasLiu/RAdam) runs it, which the
  paper says it used: the rectified Adam step (plain bias-corrected momentum while the variance is
  intractable, rho_t < 5) and decoupled weight decay scaled by the learning rate,
  p <- p - lr * (r_t m_hat / (sqrt(v_hat) + eps) + wd * p).
- RMSProp as TensorFlow and timm's `rmsproptf` run it for EfficientNet (Section V-C): second
  moment with decay 0.9 starting from ones, epsilon inside the square root, momentum 0.9, and the
  coupled weight decay.
- AdaHessian (Table IX; Yao et al., AAAI 2021): Adam-like moments of the gradient and of a
  Hutchinson estimate of the Hessian diagonal, |H z| for a Rademacher vector z (so that
  E[z * Hz] = diag(H)), averaged over the spatial taps of each convolution kernel, and decoupled
  weight decay, as in the official PyTorch code. Its training script divides the configured decay
  by the initial learning rate before building the optimiser (image_classification/main.py:
  `args.weight_decay = args.weight_decay / args.lr`), so `config.optim.weight_decay` is the decay
  per step at the initial rate, p <- p - lr_t * (m_hat / denom + (wd / lr_0) * p). The train step
  supplies the estimate from a Hessian-vector product (jax.jvp over jax.grad) as the extra argument
  `hessian_diagonal`.
- 'step' schedules: the base rate multiplied by `decay_factor` at each epoch in `decay_epochs`
  (ImageNet: 0.1 at 30 and 60; pre-act ResNets: 0.1 at 80 and 95; WRN: 0.2 at 60, 120, 160;
  ResNeXt: 0.1 at 150 and 225), optionally after a linear warm-up; 'cosine' with linear warm-up;
  'exponential': multiplied by `decay_factor` every `decay_every_epochs` (EfficientNet: 0.97 every
  2.4 epochs), counted from step 0 as the step schedule is, after a linear warm-up.
- Off unless configured (the paper uses none): `clip_grad_norm` clips the loss's gradient by its
  global norm before weight decay is added; `lr_reference_batch` scales the base rate by the batch
  per update over it (lr = base * batch / 256); `config.train.accumulate_steps` = k averages the
  gradients of k training steps into one update (`optax.MultiSteps`), so a batch of k * batch_size
  fits the memory of batch_size. BatchNorm statistics are still those of each step's batch (as
  training with the smaller batch would have them), and the schedule counts updates.
"""

from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dsop_jax.models import dsop

OPTIMIZERS = ('sgd', 'radam', 'adahessian', 'rmsprop')
SCHEDULES = ('step', 'cosine', 'exponential')


def _fail(field: str, value, allowed: str) -> None:
  raise ValueError(f'config.{field} = {value!r} is invalid: {allowed}.')


def validate_optim_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of `config.optim`."""
  o = config.optim
  if o.name not in OPTIMIZERS:
    _fail('optim.name', o.name, f'allowed: {", ".join(OPTIMIZERS)}')
  if o.schedule not in SCHEDULES:
    _fail('optim.schedule', o.schedule, f'allowed: {", ".join(SCHEDULES)}')
  if not o.learning_rate > 0:
    _fail('optim.learning_rate', o.learning_rate, 'must be > 0')
  if not 0 <= o.momentum < 1:
    _fail('optim.momentum', o.momentum, 'must lie in [0, 1)')
  if not isinstance(o.nesterov, bool):
    _fail('optim.nesterov', o.nesterov, 'allowed: True, False')
  if o.weight_decay < 0:
    _fail('optim.weight_decay', o.weight_decay, 'must be >= 0')
  if o.warmup_epochs < 0:
    _fail('optim.warmup_epochs', o.warmup_epochs, 'must be >= 0')
  epochs = tuple(o.decay_epochs)
  if any(e <= 0 for e in epochs) or list(epochs) != sorted(set(epochs)):
    _fail('optim.decay_epochs', epochs, 'must be strictly increasing positive epochs')
  if not 0.0 <= o.ema_decay < 1.0:
    _fail('optim.ema_decay', o.ema_decay, 'must lie in [0, 1) (0 = no moving average)')
  if not o.clip_grad_norm >= 0:
    _fail('optim.clip_grad_norm', o.clip_grad_norm, 'must be >= 0 (0 = no clipping)')
  if not 0 <= backbone_lr_scale(config) <= 1:
    _fail('optim.backbone_lr_scale', o.backbone_lr_scale, "must lie in [0, 1] (the backbone's "
          'rate as a fraction of the branches\' and classifier\'s; 1 = one rate)')
  reference = o.lr_reference_batch
  if not isinstance(reference, int) or isinstance(reference, bool) or reference < 0:
    _fail('optim.lr_reference_batch', reference, 'must be an integer >= 0 (0 = no scaling)')
  k = config.train.accumulate_steps
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    _fail('train.accumulate_steps', k, 'must be an integer >= 1 (1 = no accumulation)')
  if k > 1 and o.name == 'adahessian':
    _fail('train.accumulate_steps', k, "AdaHessian's Hessian estimate is per batch: use 1 with it")
  if not 0 < o.decay_factor <= 1:
    _fail('optim.decay_factor', o.decay_factor, 'must lie in (0, 1]')
  if o.schedule == 'exponential' and not o.decay_every_epochs > 0:
    _fail('optim.decay_every_epochs', o.decay_every_epochs,
          "must be > 0 with schedule 'exponential'")
  if o.name in ('adahessian', 'rmsprop') and not o.eps > 0:
    _fail('optim.eps', o.eps, 'must be > 0')
  if o.name == 'rmsprop' and not 0 < o.rms_decay < 1:
    _fail('optim.rms_decay', o.rms_decay, 'must lie in (0, 1)')
  if o.name == 'adahessian':
    if not 0 <= o.hessian_power <= 1:
      _fail('optim.hessian_power', o.hessian_power, 'must lie in [0, 1]')
    if not o.eps > 0:
      _fail('optim.eps', o.eps, 'must be > 0')


def backbone_lr_scale(config: ml_collections.ConfigDict) -> float:
  """The backbone's learning rate as a fraction of the rest's (config.optim.backbone_lr_scale)."""
  return config.optim.backbone_lr_scale


def part_labels(params: Mapping[str, Any]) -> Any:
  """'backbone' for every parameter of the backbone but its head (classifier or second-order
  head), 'new' for those and the auxiliary branches: the parts fine-tuning trains at two rates."""
  def label(path, _):
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return 'backbone' if keys[0] == dsop.BACKBONE and keys[1] not in ('head', 'gsop') else 'new'
  return jax.tree.map_with_path(label, params)


def accumulate_steps(config: ml_collections.ConfigDict) -> int:
  """Training steps (batches of config.train.batch_size) per optimiser update."""
  return config.train.accumulate_steps


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """The training steps of config.train.num_epochs: a whole number of updates, at least one."""
  per_update = accumulate_steps(config)
  return per_update * max(1, int(round(config.train.num_epochs * steps_per_epoch / per_update)))


def base_learning_rate(config: ml_collections.ConfigDict) -> float:
  """config.optim.learning_rate, times (batch per update) / config.optim.lr_reference_batch when
  that is set (the linear scaling rule: lr = base * batch / 256)."""
  o = config.optim
  if not 0 <= backbone_lr_scale(config) <= 1:
    _fail('optim.backbone_lr_scale', o.backbone_lr_scale, "must lie in [0, 1] (the backbone's "
          'rate as a fraction of the branches\' and classifier\'s; 1 = one rate)')
  reference = o.lr_reference_batch
  if not reference:
    return o.learning_rate
  return o.learning_rate * config.train.batch_size * accumulate_steps(config) / reference


def _update_schedule(config: ml_collections.ConfigDict, steps_per_epoch: float,
                     num_updates: int) -> optax.Schedule:
  """The learning rate of each optimiser update."""
  o = config.optim
  peak = base_learning_rate(config)
  warmup = int(round(o.warmup_epochs * steps_per_epoch))
  if o.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(num_updates, warmup + 1))
  if o.schedule == 'exponential':
    schedule = optax.exponential_decay(
        peak, max(1, int(round(o.decay_every_epochs * steps_per_epoch))),
        o.decay_factor, staircase=True)
  else:
    boundaries = {int(round(e * steps_per_epoch)): o.decay_factor for e in o.decay_epochs}
    schedule = optax.piecewise_constant_schedule(peak, boundaries)
  if not warmup:
    return schedule
  ramp = optax.linear_schedule(0.0, peak, warmup)
  return optax.join_schedules([ramp, lambda step: schedule(step + warmup)], [warmup])


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_steps: int) -> optax.Schedule:
  """The learning rate at each training step of `config.optim` (with gradient accumulation, the
  rate of the update the step contributes to); `steps_per_epoch` and `num_steps` count training
  steps."""
  k = accumulate_steps(config)
  schedule = _update_schedule(config, steps_per_epoch / k, num_steps // k)
  return schedule if k == 1 else lambda step: schedule(step // k)


class ScaleByAdaHessianState(NamedTuple):
  count: jax.Array
  mu: optax.Updates  # Moving average of the gradient.
  nu: optax.Updates  # Moving average of the squared Hessian-diagonal estimate.


def scale_by_adahessian(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-4,
                        hessian_power: float = 1.0) -> optax.GradientTransformationExtraArgs:
  """AdaHessian's direction m_hat / (sqrt(v_hat)^k + eps); `update` needs `hessian_diagonal`.

  m = b1 m + (1 - b1) g and v = b2 v + (1 - b2) D^2 with D the Hessian-diagonal estimate,
  bias-corrected as in Adam; k is the Hessian power (1 in the paper).
  """
  def init_fn(params: optax.Params) -> ScaleByAdaHessianState:
    zeros = jax.tree.map(jnp.zeros_like, params)
    return ScaleByAdaHessianState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

  def update_fn(updates: optax.Updates, state: ScaleByAdaHessianState,
                params: Any = None, *, hessian_diagonal: optax.Updates = None, **extra_args: Any):
    del params, extra_args
    if hessian_diagonal is None:
      raise ValueError('AdaHessian needs the Hessian-diagonal estimate: call update(..., '
                       'hessian_diagonal=hutchinson_diagonal(...)).')
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, d: b2 * v + (1 - b2) * d * d, state.nu,
                                hessian_diagonal)
    count = state.count + 1
    correction1 = 1 - b1 ** count.astype(jnp.float32)
    correction2 = 1 - b2 ** count.astype(jnp.float32)
    direction = jax.tree.map(
        lambda m, v: (m / correction1) / (jnp.sqrt(v / correction2) ** hessian_power + eps), mu, nu)
    return direction, ScaleByAdaHessianState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adahessian(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-4, weight_decay: float = 0.0, hessian_power: float = 1.0
               ) -> optax.GradientTransformationExtraArgs:
  """AdaHessian with decoupled weight decay: p <- p - lr * (m_hat / denom + wd * p)."""
  return optax.chain(scale_by_adahessian(b1, b2, eps, hessian_power),
                     optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))


def rademacher_like(tree: Any, rng: jax.Array) -> Any:
  """A tree of independent +-1 entries shaped like `tree` (Hutchinson's probe vector z)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(rng, len(leaves))
  return treedef.unflatten([jax.random.rademacher(k, x.shape, x.dtype)
                            for k, x in zip(keys, leaves)])


def hutchinson_diagonal(hessian_z: Any) -> Any:
  """AdaHessian's Hessian-diagonal estimate from H z: |H z| (equal to |z * H z| for z = +-1),
  averaged over the spatial taps of 4-D convolution kernels (HWIO), as the official code does."""
  def leaf(hz):
    if hz.ndim == 4:
      return jnp.broadcast_to(jnp.mean(jnp.abs(hz), axis=(0, 1), keepdims=True), hz.shape)
    return jnp.abs(hz)
  return jax.tree.map(leaf, hessian_z)


def freeze(tx: optax.GradientTransformation, frozen: Sequence[str]
           ) -> optax.GradientTransformationExtraArgs:
  """`tx` with the top-level parameter subtrees named in `frozen` held still: their updates are
  zero and their parts of the optimiser state (momentum, moments) stay as they are, while the
  state's counters go on. The state has `tx`'s own structure whatever is frozen, so one training
  state passes between the steps of a run that freezes its branches part-way (early removal), and
  checkpoints do not depend on it (two-phase training; `optax.partition` with `set_to_zero` would
  give each choice of frozen subtrees a state of its own)."""
  tx = optax.with_extra_args_support(tx)
  frozen = frozenset(frozen)
  if not frozen:
    return tx
  # An update or state leaf belongs to the parameter subtree of the first dict key on its path
  # (a state's NamedTuple fields and tuple positions come before it).
  is_frozen = lambda path: next(  # noqa: E731
      (key.key in frozen for key in path if isinstance(key, jax.tree_util.DictKey)), False)

  def update_fn(updates, state, params=None, **extra_args):
    new_updates, new_state = tx.update(updates, state, params, **extra_args)
    zero = lambda path, u: jnp.zeros_like(u) if is_frozen(path) else u  # noqa: E731
    hold = lambda path, new, old: old if is_frozen(path) else new  # noqa: E731
    return (jax.tree.map_with_path(zero, new_updates),
            jax.tree.map_with_path(hold, new_state, state))

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def needs_hessian(config: ml_collections.ConfigDict) -> bool:
  """Whether the optimiser's update needs `hessian_diagonal` (a Hessian-vector product a step)."""
  return config.optim.name == 'adahessian'


def radam(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """RAdam with the official code's decoupled weight decay: p <- p - lr * (step + wd * p)."""
  return optax.chain(optax.scale_by_radam(b1, b2, eps, threshold=5.0),
                     optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     num_steps: int) -> optax.GradientTransformation:
  """SGD (momentum, optional Nesterov) or RMSProp with coupled weight decay, or RAdam or
  AdaHessian with decoupled weight decay, as their official code runs them, on the schedule (of a
  config that passed `validate_optim_config`)."""
  o = config.optim
  k = accumulate_steps(config)
  lr = _update_schedule(config, steps_per_epoch / k, num_steps // k)
  if o.name == 'adahessian':  # Decay / initial rate, as AdaHessian's training script does.
    tx = adahessian(lr, eps=o.eps, weight_decay=o.weight_decay / base_learning_rate(config),
                    hessian_power=o.hessian_power)
  elif o.name == 'radam':
    tx = radam(lr, weight_decay=o.weight_decay)
  else:
    if o.name == 'sgd':
      opt = optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov)
    else:
      opt = optax.rmsprop(lr, decay=o.rms_decay, eps=o.eps, initial_scale=1.0, eps_in_sqrt=True,
                          momentum=o.momentum or None)
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay), opt)
  scale = backbone_lr_scale(config)
  if scale != 1.0:  # Fine-tuning: the backbone's whole update (decay included) at `scale` x.
    tx = optax.chain(tx, optax.multi_transform(
        {'backbone': optax.scale(scale), 'new': optax.identity()}, part_labels))
  if o.clip_grad_norm > 0:  # The loss's gradient, before weight decay is added.
    tx = optax.chain(optax.clip_by_global_norm(o.clip_grad_norm), tx)
  if k > 1:  # Averages k gradients, then updates once; the other k-1 steps leave the parameters.
    tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
  return tx
