"""Optimisers and schedules: the paper's step schedules at their boundaries, warm-up, cosine,
PyTorch-style coupled weight decay by hand, RAdam, and validation messages."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar_wrn28_10
from configs import imagenet_r50
from dsop_jax import optim


def test_imagenet_step_schedule():
  config = imagenet_r50.get_config()
  lr = optim.learning_rate_schedule(config, steps_per_epoch=100, num_steps=9000)
  assert [float(lr(s)) for s in (0, 2999, 3000, 5999, 6000, 8999)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_wrn_step_schedule_divides_by_5():
  lr = optim.learning_rate_schedule(cifar_wrn28_10.get_config(), steps_per_epoch=10,
                                    num_steps=2000)
  assert [float(lr(s)) for s in (599, 600, 1200, 1600)] == pytest.approx(
      [0.1, 0.02, 0.004, 0.0008])


def test_warmup_then_steps_and_cosine():
  config = imagenet_r50.get_config()
  config.optim.warmup_epochs = 5.0
  lr = optim.learning_rate_schedule(config, steps_per_epoch=10, num_steps=900)
  assert [float(lr(s)) for s in (0, 25, 50, 299, 300)] == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.01])
  config.optim.schedule = 'cosine'
  lr = optim.learning_rate_schedule(config, steps_per_epoch=10, num_steps=900)
  assert [float(lr(s)) for s in (0, 50, 475, 900)] == pytest.approx([0.0, 0.1, 0.05, 0.0], abs=1e-6)


def test_sgd_update_is_pytorch_coupled_weight_decay_with_momentum():
  config = imagenet_r50.get_config()
  tx = optim.create_optimizer(config, steps_per_epoch=100, num_steps=9000)
  w, g1, g2 = jnp.asarray([1.0, -2.0]), jnp.asarray([0.5, 0.25]), jnp.asarray([-1.0, 2.0])
  state = tx.init(w)
  u1, state = tx.update(g1, state, w)
  w1 = w + u1
  u2, state = tx.update(g2, state, w1)
  # PyTorch SGD: d = g + wd*w; v = mu*v + d; w -= lr*v.
  v1 = np.asarray(g1) + 1e-4 * np.asarray(w)
  v2 = 0.9 * v1 + np.asarray(g2) + 1e-4 * np.asarray(w1)
  np.testing.assert_allclose(w1, np.asarray(w) - 0.1 * v1, rtol=1e-6)
  np.testing.assert_allclose(w1 + u2, np.asarray(w1) - 0.1 * v2, rtol=1e-6)


def test_radam_and_nesterov_build_and_step():
  config = cifar_wrn28_10.get_config()
  for name, nesterov in (('radam', False), ('sgd', True)):
    config.optim.name, config.optim.nesterov = name, nesterov
    tx = optim.create_optimizer(config, steps_per_epoch=10, num_steps=100)
    w = jnp.ones(3)
    updates, _ = tx.update(jnp.ones(3), tx.init(w), w)
    assert bool(jnp.all(updates < 0))
  config.optim.name = 'radam'
  expected = optax.chain(optax.add_decayed_weights(5e-4), optax.radam(0.1))
  got = optim.create_optimizer(config, steps_per_epoch=10, num_steps=100)
  w, g = jnp.asarray([1.0, 2.0]), jnp.asarray([0.3, -0.1])
  np.testing.assert_allclose(got.update(g, got.init(w), w)[0],
                             expected.update(g, expected.init(w), w)[0], rtol=1e-6)


@pytest.mark.parametrize('field, value, message', [
    ('name', 'adamw', "config.optim.name = 'adamw' is invalid: allowed: sgd, radam"),
    ('schedule', 'linear', "config.optim.schedule = 'linear' is invalid"),
    ('learning_rate', 0.0, 'config.optim.learning_rate = 0.0 is invalid'),
    ('momentum', 1.0, 'config.optim.momentum = 1.0 is invalid'),
    ('weight_decay', -1e-4, 'config.optim.weight_decay = -0.0001 is invalid'),
    ('decay_epochs', (60, 30), 'config.optim.decay_epochs = (60, 30) is invalid'),
    ('decay_factor', 2.0, 'config.optim.decay_factor = 2.0 is invalid'),
])
def test_invalid_fields_are_named(field, value, message):
  config = imagenet_r50.get_config()
  config.optim[field] = value
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    optim.create_optimizer(config, steps_per_epoch=10, num_steps=100)
