"""Optimisers and learning-rate schedules of the paper's experiments (Sections V-B, V-D, Table IX).

- SGD with momentum 0.9 (optionally Nesterov) and PyTorch-style coupled weight decay (wd * w added to
  the gradient before momentum, on every parameter), as in the paper's PyTorch runs.
- RAdam (Table IX) with the same coupled weight decay.
- 'step' schedules: the base rate multiplied by `decay_factor` at each epoch in `decay_epochs`
  (ImageNet: 0.1 at 30 and 60; pre-act ResNets: 0.1 at 80 and 95; WRN: 0.2 at 60, 120, 160;
  ResNeXt: 0.1 at 150 and 225), optionally after a linear warm-up; 'cosine' with linear warm-up.
"""

import ml_collections
import optax

OPTIMIZERS = ('sgd', 'radam')
SCHEDULES = ('step', 'cosine')


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
  if o.weight_decay < 0:
    _fail('optim.weight_decay', o.weight_decay, 'must be >= 0')
  if o.warmup_epochs < 0:
    _fail('optim.warmup_epochs', o.warmup_epochs, 'must be >= 0')
  epochs = tuple(o.decay_epochs)
  if any(e <= 0 for e in epochs) or list(epochs) != sorted(set(epochs)):
    _fail('optim.decay_epochs', epochs, 'must be strictly increasing positive epochs')
  if not 0 < o.decay_factor <= 1:
    _fail('optim.decay_factor', o.decay_factor, 'must lie in (0, 1]')


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_steps: int) -> optax.Schedule:
  """The per-step learning rate of `config.optim`."""
  o = config.optim
  warmup = int(round(o.warmup_epochs * steps_per_epoch))
  if o.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, warmup, max(num_steps, warmup + 1))
  boundaries = {int(round(e * steps_per_epoch)): o.decay_factor for e in o.decay_epochs}
  schedule = optax.piecewise_constant_schedule(o.learning_rate, boundaries)
  if not warmup:
    return schedule
  ramp = optax.linear_schedule(0.0, o.learning_rate, warmup)
  return optax.join_schedules([ramp, lambda step: schedule(step + warmup)], [warmup])


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     num_steps: int) -> optax.GradientTransformation:
  """SGD (momentum, optional Nesterov) or RAdam, with coupled weight decay, on the schedule."""
  validate_optim_config(config)
  o = config.optim
  lr = learning_rate_schedule(config, steps_per_epoch, num_steps)
  if o.name == 'sgd':
    opt = optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov)
  else:
    opt = optax.radam(lr)
  return optax.chain(optax.add_decayed_weights(o.weight_decay), opt)
