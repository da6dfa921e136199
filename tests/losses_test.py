"""Eq. 1 against a direct NumPy computation; per-head terms; weight/head mismatches; Hinton's
distillation loss against its formula on fixed logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsop_jax.training import losses


def _np_ce(logits, labels, smoothing=0.0):
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  k = logits.shape[-1]
  target = np.eye(k)[labels] * (1 - smoothing) + smoothing / k
  return float(-(target * logp).sum(-1).mean())


def _outputs(seed=0):
  rng = np.random.default_rng(seed)
  make = lambda: jnp.asarray(rng.normal(size=(6, 4)) * 3, jnp.float32)
  return {'logits': make(), 'aux_logits': {'a_pds2': make(), 'a_pds3': make()}}


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_total_is_weighted_sum_of_cross_entropies(smoothing):
  outputs = _outputs()
  labels = jnp.asarray([0, 1, 2, 3, 0, 1])
  weights = {'logits': 1.0, 'a_pds2': 0.1, 'a_pds3': 0.3}
  total, terms = losses.dsop_loss(outputs=outputs, labels=labels, weights=weights,
                                  label_smoothing=smoothing)
  heads = {'logits': outputs['logits'], **outputs['aux_logits']}
  want = {k: _np_ce(v, np.asarray(labels), smoothing) for k, v in heads.items()}
  assert sorted(terms) == sorted(want)
  for name in want:
    assert float(terms[name]) == pytest.approx(want[name], rel=1e-5)
  assert float(total) == pytest.approx(sum(weights[k] * want[k] for k in want), rel=1e-5)


def test_bfloat16_logits_are_scored_in_float32():
  outputs = {'logits': _outputs()['logits'].astype(jnp.bfloat16), 'aux_logits': {}}
  total, _ = losses.dsop_loss(outputs=outputs, labels=jnp.zeros(6, jnp.int32),
                              weights={'logits': 1.0})
  assert total.dtype == jnp.float32


def test_weights_must_name_exactly_the_heads():
  outputs = _outputs()
  with pytest.raises(ValueError, match=r"missing: \['a_pds3'\], unknown: \['a_pds4'\]"):
    losses.dsop_loss(outputs=outputs, labels=jnp.zeros(6, jnp.int32),
                     weights={'logits': 1.0, 'a_pds2': 1.0, 'a_pds4': 1.0})


def test_distillation_loss_matches_hintons_formula_on_fixed_logits():
  student = np.asarray([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
  teacher = np.asarray([[1.5, 1.0, -2.0], [-1.0, 0.0, 4.0]])
  labels = np.asarray([0, 2])
  temperature, weight = 4.0, 0.7

  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  p, q = softmax(teacher / temperature), softmax(student / temperature)
  soft = temperature ** 2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1))
  hard = _np_ce(student, labels)
  total, terms = losses.distillation_loss(
      student_logits=jnp.asarray(student, jnp.float32), teacher_logits=jnp.asarray(teacher),
      labels=jnp.asarray(labels), temperature=temperature, soft_weight=weight)
  assert float(terms['hard']) == pytest.approx(hard, rel=1e-6)
  assert float(terms['soft']) == pytest.approx(soft, rel=1e-5)
  assert float(total) == pytest.approx(0.3 * hard + 0.7 * soft, rel=1e-5)
  # The teacher gets no gradient; equal logits give a zero soft term.
  grad = jax.grad(lambda t: losses.distillation_loss(
      student_logits=jnp.asarray(student), teacher_logits=t, labels=jnp.asarray(labels),
      temperature=temperature, soft_weight=weight)[0])(jnp.asarray(teacher))
  np.testing.assert_array_equal(grad, np.zeros_like(teacher))
  same = losses.distillation_loss(student_logits=jnp.asarray(student),
                                  teacher_logits=jnp.asarray(student), labels=jnp.asarray(labels),
                                  temperature=2.0, soft_weight=1.0)[1]['soft']
  assert abs(float(same)) < 1e-6


@pytest.mark.parametrize('kwargs, message', [
    (dict(temperature=0.0, soft_weight=0.5), 'temperature = 0.0 is invalid'),
    (dict(temperature=2.0, soft_weight=1.5), 'soft_weight = 1.5 is invalid'),
])
def test_distillation_loss_rejects_bad_settings(kwargs, message):
  logits = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match=message):
    losses.distillation_loss(student_logits=logits, teacher_logits=logits,
                             labels=jnp.zeros(2, jnp.int32), **kwargs)


@pytest.mark.parametrize('mixup, cutmix', [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_mix_images_with_their_mirror_and_score_both_labels(mixup, cutmix):
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(6, 8, 8, 3)), jnp.float32)
  labels = jnp.asarray([0, 1, 2, 3, 0, 1])
  kinds = set()
  mix_fn = jax.jit(lambda b, r: losses.mix_batch(b, r, mixup_alpha=mixup, cutmix_alpha=cutmix))
  for seed in range(6):
    mixed, mix = mix_fn({'image': images, 'label': labels}, jax.random.key(seed))
    lam, x, partner = float(mix.lam), np.asarray(mixed['image']), np.asarray(images)[::-1]
    np.testing.assert_array_equal(mix.partner_labels, np.asarray(labels)[::-1])
    np.testing.assert_array_equal(mixed['label'], labels)
    own = np.all(x == np.asarray(images), axis=-1)
    other = np.all(x == partner, axis=-1)
    if np.all(own | other):  # CutMix: one box of the mirror's pixels, lam the own-pixel share.
      kinds.add('cutmix')
      assert lam == pytest.approx(float(np.mean(own[0])))
      assert np.array_equal(other, np.broadcast_to(other[0], other.shape))
    else:  # Mixup: every pixel lam of its own and 1 - lam of its mirror's.
      kinds.add('mixup')
      np.testing.assert_allclose(x, lam * np.asarray(images) + (1 - lam) * partner, atol=1e-5)
    # Every head scores lam * CE(labels) + (1 - lam) * CE(mirrored labels).
    outputs = _outputs(seed)
    total, terms = losses.dsop_loss(outputs=outputs, labels=labels, weights={
        'logits': 1.0, 'a_pds2': 0.5, 'a_pds3': 0.25}, mix=mix)
    for name, logits in losses.head_logits(outputs).items():
      expected = (lam * _np_ce(logits, np.asarray(labels))
                  + (1 - lam) * _np_ce(logits, np.asarray(labels)[::-1]))
      assert float(terms[name]) == pytest.approx(expected, rel=1e-5)
  assert kinds == ({'mixup'} if not cutmix else {'cutmix'} if not mixup else {'mixup', 'cutmix'})
