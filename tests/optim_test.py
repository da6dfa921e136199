"""Optimisers and schedules: the paper's step schedules at their boundaries, warm-up, cosine,
PyTorch-style coupled weight decay by hand, RAdam, AdaHessian (a hand-computed update, the
Hutchinson estimate, a tiny model trained through the train step), and validation messages."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dsop_jax.configs import cifar_wrn28_10
from dsop_jax.configs import imagenet_r50
from dsop_jax.models import dsop
from dsop_jax.models import registry
from dsop_jax.training import losses as losses_lib
from dsop_jax.training import optim
from dsop_jax.training import steps
from tests import conftest


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


@pytest.mark.parametrize('name', ['sgd', 'radam'])
def test_backbone_learning_rate_scale_scales_the_backbones_whole_update(name):
  """Fine-tuning's per-part rates: with backbone_lr_scale 0.25 every backbone parameter but its
  classifier moves by a quarter of what it moves with one rate (weight decay and momentum
  included, over two steps); the classifier and the branches move as with one rate."""
  params = {'backbone': {'conv_init': {'kernel': jnp.asarray([1.0, -2.0])},
                         'head': {'kernel': jnp.asarray([0.5, 1.5])}},
            'a_pds4': {'fc': {'kernel': jnp.asarray([-1.0, 3.0])}}}
  grads = [jax.tree.map(lambda x, k=k: (k + 1.0) * jnp.sign(x) + 0.5, params) for k in range(2)]
  moved = {}
  for scale in (1.0, 0.25):
    config = imagenet_r50.get_config()
    config.optim.update(name=name, backbone_lr_scale=scale, warmup_epochs=0.0)
    tx = optim.create_optimizer(config, steps_per_epoch=100, num_steps=9000)
    state, total = tx.init(params), jax.tree.map(jnp.zeros_like, params)
    for g in grads:
      updates, state = tx.update(g, state, params)  # The same point: only the rates differ.
      total = jax.tree.map(jnp.add, total, updates)
    moved[scale] = total
  assert optim.part_labels(params) == {'backbone': {'conv_init': {'kernel': 'backbone'},
                                                    'head': {'kernel': 'new'}},
                                       'a_pds4': {'fc': {'kernel': 'new'}}}
  conv = lambda tree: tree['backbone']['conv_init']['kernel']  # noqa: E731
  assert float(jnp.abs(conv(moved[1.0])).min()) > 0
  np.testing.assert_allclose(conv(moved[0.25]), 0.25 * conv(moved[1.0]), rtol=1e-6)
  for path in (('backbone', 'head'), ('a_pds4', 'fc')):
    np.testing.assert_array_equal(moved[0.25][path[0]][path[1]]['kernel'],
                                  moved[1.0][path[0]][path[1]]['kernel'])


def test_radam_and_nesterov_build_and_step():
  config = cifar_wrn28_10.get_config()
  for name, nesterov in (('radam', False), ('sgd', True)):
    config.optim.name, config.optim.nesterov = name, nesterov
    tx = optim.create_optimizer(config, steps_per_epoch=10, num_steps=100)
    w = jnp.ones(3)
    updates, _ = tx.update(jnp.ones(3), tx.init(w), w)
    assert bool(jnp.all(updates < 0))


def test_radam_matches_the_official_update_with_decoupled_weight_decay():
  """The official RAdam step by hand (LiyuanLucasLiu/RAdam, cifar_imagenet/utils/radam.py) over 8
  steps: plain bias-corrected momentum while rho_t < 5 (steps 1-5 with beta2 0.999), the rectified
  adaptive step after, and weight decay p -= lr * wd * p, not added to the gradient."""
  from dsop_jax.configs import cifar_resnet20  # pylint: disable=g-import-not-at-top
  config = cifar_resnet20.get_config('cifar10,radam')
  assert (config.optim.learning_rate, config.optim.weight_decay) == (0.003, 1e-4)
  # Rates at which coupled decay (wd * p added to the gradient) would move w measurably.
  lr, wd = config.optim.learning_rate, config.optim.weight_decay = 0.1, 0.5
  tx = optim.create_optimizer(config, steps_per_epoch=100, num_steps=1000)
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=4), jnp.float32)
  state = tx.init(w)
  ref, m, v = np.asarray(w, np.float64), np.zeros(4), np.zeros(4)
  rho_max = 2 / (1 - 0.999) - 1
  for t in range(1, 9):
    g = rng.normal(size=4)
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, w)
    w = optax.apply_updates(w, updates)
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    rho = rho_max - 2 * t * 0.999**t / (1 - 0.999**t)
    ref = ref - wd * lr * ref
    if rho >= 5:
      step = lr * np.sqrt((1 - 0.999**t) * (rho - 4) / (rho_max - 4) * (rho - 2) / rho * rho_max
                          / (rho_max - 2)) / (1 - 0.9**t)
      ref = ref - step * m / (np.sqrt(v) + 1e-8)
    else:
      ref = ref - lr / (1 - 0.9**t) * m
    # Tolerance: optax forms rho_t in float32, where rho_max - 2 t b2^t / (1 - b2^t) cancels (~3e-5).
    np.testing.assert_allclose(w, ref, rtol=1e-4, atol=2e-5, err_msg=f'step {t}')


def test_efficientnet_exponential_schedule_after_warmup():
  """lr 0.048 x 0.97^floor(epoch / 2.4), counted from step 0, after a 3-epoch linear warm-up."""
  from dsop_jax.configs import imagenet_efficientnet_b0  # pylint: disable=g-import-not-at-top
  config = imagenet_efficientnet_b0.get_config()
  lr = optim.learning_rate_schedule(config, steps_per_epoch=10, num_steps=4500)
  steps = (0, 15, 30, 47, 48, 95, 96, 4499)
  expected = [0.0, 0.024, 0.048 * 0.97, 0.048 * 0.97, 0.048 * 0.97**2, 0.048 * 0.97**3,
              0.048 * 0.97**4, 0.048 * 0.97**187]
  assert [float(lr(s)) for s in steps] == pytest.approx(expected, rel=1e-5)


def test_rmsprop_matches_tensorflow_style_updates_by_hand():
  """TF/timm rmsproptf: ms starts at 1, ms = 0.9 ms + 0.1 g^2, mom = 0.9 mom + lr g / sqrt(ms + eps),
  with the coupled weight decay added to g; three steps at a constant rate."""
  from dsop_jax.configs import imagenet_efficientnet_b0  # pylint: disable=g-import-not-at-top
  config = imagenet_efficientnet_b0.get_config()
  config.optim.schedule, config.optim.warmup_epochs = 'step', 0.0
  config.optim.decay_epochs = ()
  tx = optim.create_optimizer(config, steps_per_epoch=10, num_steps=100)
  w = jnp.asarray([1.0, -2.0, 0.5])
  state = tx.init(w)
  ref_w, ms, mom = np.asarray(w, np.float64), np.ones(3), np.zeros(3)
  for grad in ([0.3, -0.1, 2.0], [0.2, 0.4, -1.0], [-0.5, 0.0, 0.1]):
    updates, state = tx.update(jnp.asarray(grad), state, w)
    w = optax.apply_updates(w, updates)
    g = np.asarray(grad) + 1e-5 * ref_w
    ms = 0.9 * ms + 0.1 * g * g
    mom = 0.9 * mom + 0.048 * g / np.sqrt(ms + 1e-3)
    ref_w = ref_w - mom
  np.testing.assert_allclose(w, ref_w, rtol=1e-6)


@pytest.mark.parametrize('field, value, message', [
    ('name', 'adamw', "config.optim.name = 'adamw' is invalid: allowed: sgd, radam"),
    ('schedule', 'linear', "config.optim.schedule = 'linear' is invalid"),
    ('learning_rate', 0.0, 'config.optim.learning_rate = 0.0 is invalid'),
    ('momentum', 1.0, 'config.optim.momentum = 1.0 is invalid'),
    ('weight_decay', -1e-4, 'config.optim.weight_decay = -0.0001 is invalid'),
    ('decay_epochs', (60, 30), 'config.optim.decay_epochs = (60, 30) is invalid'),
    ('decay_factor', 2.0, 'config.optim.decay_factor = 2.0 is invalid'),
    ('decay_every_epochs', 0.0, "config.optim.decay_every_epochs = 0.0 is invalid: must be > 0 "
     "with schedule 'exponential'"),
    ('rms_decay', 1.0, 'config.optim.rms_decay = 1.0 is invalid'),
    ('eps', 0.0, 'config.optim.eps = 0.0 is invalid'),
    ('clip_grad_norm', -1.0, 'config.optim.clip_grad_norm = -1.0 is invalid: must be >= 0'),
    ('lr_reference_batch', -256, 'config.optim.lr_reference_batch = -256 is invalid'),
    ('backbone_lr_scale', 1.5, 'config.optim.backbone_lr_scale = 1.5 is invalid: must lie in'),
])
def test_invalid_fields_are_named(field, value, message):
  config = imagenet_r50.get_config()
  if field in ('decay_every_epochs', 'rms_decay', 'eps'):  # Checked where they are used.
    config.optim.name, config.optim.schedule = 'rmsprop', 'exponential'
  config.optim[field] = value
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    optim.validate_optim_config(config)


def test_accumulation_is_one_update_of_the_mean_gradient_with_clipping_and_scaled_rate():
  """k = 2 accumulated steps of batch 256 update once, like one step of batch 512 on the mean of
  their gradients, at the rate of the update count scaled by 512 / lr_reference_batch; clipping
  applies to that mean before weight decay is added."""
  config = imagenet_r50.get_config()  # SGD, momentum 0.9, decay 1e-4, batch 256.
  config.optim.update(warmup_epochs=1.0, lr_reference_batch=128, clip_grad_norm=1.0)
  config.train.batch_size = 512
  whole = optim.create_optimizer(config, steps_per_epoch=2, num_steps=100)
  lr = optim.learning_rate_schedule(config, steps_per_epoch=2, num_steps=100)
  assert [float(lr(s)) for s in (0, 1, 2)] == pytest.approx([0.0, 0.2, 0.4])  # Peak 0.1 * 4.
  config.train.update(batch_size=256, accumulate_steps=2)
  accumulated = optim.create_optimizer(config, steps_per_epoch=4, num_steps=200)
  lr = optim.learning_rate_schedule(config, steps_per_epoch=4, num_steps=200)
  assert [float(lr(s)) for s in (0, 1, 2, 3, 4)] == pytest.approx([0.0, 0.0, 0.2, 0.2, 0.4])
  w = jnp.asarray([1.0, -2.0, 0.5])
  grads = [jnp.asarray(g) for g in ([3.0, 0.0, 4.0], [-1.0, 2.0, 0.0], [0.5, 0.5, 0.5],
                                    [0.1, -0.3, 0.2])]
  a, b = w, w
  state_a, state_b = whole.init(w), accumulated.init(w)
  for i in range(2):
    u, state_a = whole.update((grads[2 * i] + grads[2 * i + 1]) / 2, state_a, a)
    a = a + u
    u, state_b = accumulated.update(grads[2 * i], state_b, b)
    np.testing.assert_array_equal(u, jnp.zeros_like(w))  # The first of the two: no update.
    u, state_b = accumulated.update(grads[2 * i + 1], state_b, b)
    b = b + u
    np.testing.assert_allclose(b, a, rtol=1e-6)
  # By hand (PyTorch SGD): the first mean gradient (1, 1, 2) has norm sqrt(6) > 1 and is clipped to
  # norm 1, then applied at rate 0 (warm-up); the second, norm 0.47, is not clipped.
  first, second = (grads[0] + grads[1]) / 2, (grads[2] + grads[3]) / 2
  v1 = first / np.sqrt(6.0) + 1e-4 * w
  v2 = 0.9 * v1 + second + 1e-4 * w
  np.testing.assert_allclose(a, w - 0.2 * v2, rtol=1e-6)


def _quadratic():
  """f(w) = 1/2 w^T A w - b^T w with a non-diagonal A: gradient A w - b, Hessian A."""
  a = jnp.asarray([[2.0, 0.5], [0.5, 1.0]])
  b = jnp.asarray([1.0, -2.0])
  return a, b, lambda w: 0.5 * w @ a @ w - b @ w


def test_adahessian_matches_a_hand_computed_update_on_a_quadratic():
  a, b, f = _quadratic()
  w0, z = jnp.asarray([1.0, -1.0]), jnp.asarray([1.0, -1.0])
  g, hz = jax.jvp(jax.grad(f), (w0,), (z,))  # Forward-over-reverse Hessian-vector product.
  np.testing.assert_allclose(hz, a @ z, rtol=1e-6)  # [1.5, -0.5].
  d = optim.hutchinson_diagonal(hz)
  np.testing.assert_allclose(d, [1.5, 0.5])
  lr, wd, eps = 0.15, 5e-4, 1e-4
  tx = optim.adahessian(lr, weight_decay=wd, eps=eps)
  state = tx.init(w0)
  updates, state = tx.update(g, state, w0, hessian_diagonal=d)
  # Step 1, by hand: m_hat = g, v_hat = d^2, so w1 = w0 - lr * (g / (|d| + eps) + wd * w0) with
  # g = A w0 - b = [0.5, 1.5], hence the two entries below.
  w1 = w0 + updates
  np.testing.assert_allclose(w1, [1 - 0.15 * (0.5 / 1.5001 + 5e-4),
                                  -1 - 0.15 * (1.5 / 0.5001 - 5e-4)], rtol=1e-5)  # float32 1 - b2.
  # Step 2 against the official update rule written out in float64.
  g2, d2 = np.asarray(a @ w1 - b, np.float64), np.asarray([0.7, 0.2])
  m = 0.9 * (0.1 * np.asarray(g, np.float64)) + 0.1 * g2
  v = 0.999 * (0.001 * np.asarray(d, np.float64) ** 2) + 0.001 * d2 ** 2
  denom = np.sqrt(v) / np.sqrt(1 - 0.999 ** 2) + eps
  expected = np.asarray(w1, np.float64) - lr * (m / (1 - 0.9 ** 2) / denom + wd * np.asarray(w1))
  updates, state = tx.update(jnp.asarray(g2, jnp.float32), state, w1,
                             hessian_diagonal=jnp.asarray(d2, jnp.float32))
  np.testing.assert_allclose(w1 + updates, expected, rtol=1e-5)
  with pytest.raises(ValueError, match='AdaHessian needs the Hessian-diagonal estimate'):
    tx.update(g, state, w1)


def test_hutchinson_estimate_is_unbiased_and_averages_conv_kernels_over_taps():
  a, _, f = _quadratic()
  w = jnp.zeros(2)
  hvp = jax.vmap(lambda z: jax.jvp(jax.grad(f), (w,), (z,))[1])
  probes = optim.rademacher_like(jnp.zeros((4000, 2)), jax.random.key(0))
  assert set(np.unique(np.asarray(probes))) == {-1.0, 1.0}
  estimate = jnp.mean(probes * hvp(probes), axis=0)  # E[z * Hz] = diag(H).
  np.testing.assert_allclose(estimate, jnp.diag(a), atol=0.05)
  kernel = jnp.arange(3 * 3 * 2 * 4, dtype=jnp.float32).reshape(3, 3, 2, 4) - 30.0
  averaged = optim.hutchinson_diagonal({'kernel': kernel, 'bias': -jnp.ones(4)})
  np.testing.assert_allclose(averaged['kernel'][1, 2],
                             jnp.mean(jnp.abs(kernel), axis=(0, 1)), rtol=1e-6)
  np.testing.assert_array_equal(averaged['bias'], jnp.ones(4))


def test_freeze_holds_parameters_and_their_optimiser_state_and_keeps_the_state_structure():
  """optim.freeze: the frozen subtrees get zero updates and their momentum (SGD) or moments and
  Hessian moment (AdaHessian, with its extra argument) stay as they were, while the other subtrees
  and the counters move on; the state has the optimiser's own structure, frozen or not."""
  params = {'backbone': {'w': jnp.ones(3)}, 'a_pds2': {'w': jnp.full(2, 2.0)}}
  grads = {'backbone': {'w': jnp.full(3, 0.5)}, 'a_pds2': {'w': jnp.full(2, -1.0)}}
  for tx, extra in ((optax.sgd(0.1, momentum=0.9), {}),
                    (optim.adahessian(0.1, weight_decay=1e-2), {'hessian_diagonal': grads})):
    state = tx.init(params)
    _, state = tx.update(grads, state, params, **extra)  # Momentum to hold.
    frozen = optim.freeze(tx, ['a_pds2'])
    assert jax.tree.structure(frozen.init(params)) == jax.tree.structure(state)
    updates, held = frozen.update(grads, state, params, **extra)
    free_updates, moved = tx.update(grads, state, params, **extra)
    np.testing.assert_array_equal(updates['a_pds2']['w'], np.zeros(2))
    np.testing.assert_array_equal(updates['backbone']['w'], free_updates['backbone']['w'])
    for (path, a), b, c in zip(jax.tree.leaves_with_path(held),
                               jax.tree.leaves(state), jax.tree.leaves(moved)):
      name = jax.tree_util.keystr(path)
      if 'a_pds2' in name:  # Held: the state before this update.
        np.testing.assert_array_equal(a, b, err_msg=name)
      else:  # The backbone's moments and every counter: as without freezing.
        np.testing.assert_array_equal(a, c, err_msg=name)
        assert 'backbone' in name or not np.array_equal(a, b), name
    nothing = optim.freeze(tx, [])
    for a, b in zip(jax.tree.leaves(nothing.update(grads, state, params, **extra)),
                    jax.tree.leaves((free_updates, moved))):
      np.testing.assert_array_equal(a, b)


def test_adahessian_trains_a_tiny_dsop_model_in_the_train_step():
  backbone = conftest.TinyPreAct(stage_sizes=(1, 1, 1))
  layout = conftest.branches_config(blocks=(0, 0, 0), pattern='[1]', channels=(4, 8, 8),
                                    reduction=('direct',) * 3)
  model = dsop.DSoPNet(backbone=backbone, num_classes=5,
                       branches=tuple(registry.layout_branches(backbone.stage_specs(), layout)))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.normal(size=(16, 16, 16, 3)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 5, size=16), jnp.int32)}
  variables = registry.init_variables(model, jax.random.key(0), batch['image'])
  tx = optim.adahessian(0.15, weight_decay=5e-4)  # The official CIFAR settings.
  state = steps.TrainState(step=jnp.zeros([], jnp.int32), params=variables['params'],
                           batch_stats=variables['batch_stats'],
                           opt_state=tx.init(variables['params']))
  heads = model.apply(variables, batch['image'], train=False)
  weights = {'logits': 1.0, **{name: 0.3 for name in heads['aux_logits']}}
  step = jax.jit(steps.make_train_step(losses_lib.dsop_objective(model, weights), tx, hessian=True))
  # The step's curvature is a real Hessian-vector product: after one step AdaHessian's second
  # moment holds (1 - b2) * |H z|^2 for the step's probe z, computed here independently.
  def loss(params):
    outputs, _ = model.apply({'params': params, 'batch_stats': state.batch_stats}, batch['image'],
                             train=True, mutable=['batch_stats'])
    return losses_lib.dsop_loss(outputs=outputs, labels=batch['label'], weights=weights)[0]
  probe = optim.rademacher_like(
      state.params, jax.random.fold_in(jax.random.fold_in(jax.random.key(1), 0), 1))
  hessian_z = jax.jit(lambda p, z: jax.jvp(jax.grad(loss), (p,), (z,))[1])(state.params, probe)
  first, _ = step(state, batch, jax.random.key(1))
  jax.tree.map(
      lambda nu, d: np.testing.assert_allclose(nu, 0.001 * d ** 2, rtol=2e-3, atol=1e-9),
      first.opt_state[0].nu, optim.hutchinson_diagonal(hessian_z))
  losses = []
  for _ in range(25):  # Fitting one fixed batch: the loss must fall steadily.
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics['loss']))
    assert float(metrics['nonfinite']) == 0.0
  assert losses[-1] < 0.3 * losses[0], losses
  assert int(state.opt_state[0].count) == 25


def test_adahessian_config_builds_and_is_validated():
  config = cifar_wrn28_10.get_config()
  config.optim.name = 'adahessian'
  assert optim.needs_hessian(config)
  tx = optim.create_optimizer(config, steps_per_epoch=10, num_steps=100)
  w = jnp.ones(3)
  updates, _ = tx.update(jnp.ones(3), tx.init(w), w, hessian_diagonal=jnp.ones(3))
  assert bool(jnp.all(updates < 0))
  config.optim.hessian_power = 1.5
  with pytest.raises(ValueError, match=r'config.optim.hessian_power = 1.5 is invalid: must lie '):
    optim.validate_optim_config(config)


def test_accumulated_train_steps_equal_one_step_of_the_whole_batch_without_batchnorm():
  """Through the train step: k = 2 steps of batch 4 give the parameters (and momentum) of one step
  of their batch of 8, for a BatchNorm-free model (a linear classifier); the moving average of the
  weights moves once per update (its decay is per update, not per accumulated step)."""
  config = imagenet_r50.get_config()
  config.optim.update(lr_reference_batch=8, clip_grad_norm=0.5)
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 3, 8))}

  def objective(params, batch_stats, b, dropout_rng, loss_args=None):
    del dropout_rng, loss_args
    logits = b['image'] @ params['w'] + params['b']
    loss = losses_lib.cross_entropy(logits=logits, labels=b['label'])
    return loss, ({'logits': logits}, batch_stats, {'logits': loss})

  params = {'w': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), 'b': jnp.zeros(3)}
  final = {}
  for k, size in ((1, 8), (2, 4)):
    config.train.update(batch_size=size, accumulate_steps=k)
    tx = optim.create_optimizer(config, steps_per_epoch=10, num_steps=100)
    step = jax.jit(steps.make_train_step(objective, tx, ema_decay=0.5, ema_every=k))
    state = steps.EMATrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                                opt_state=tx.init(params),
                                ema={'params': params, 'batch_stats': {}})
    for _ in range(2):  # Two updates.
      for i in range(k):
        state, _ = step(state, {key: v[i * size:(i + 1) * size] for key, v in batch.items()},
                        jax.random.key(0))
    final[k] = (state.params, state.ema)
  for a, b in zip(jax.tree.leaves(final[1]), jax.tree.leaves(final[2])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(final[2][1]['params']['w'], params['w'])  # It moved.
