"""Eq. 1 against a direct NumPy computation; per-head terms; weight/head mismatches; Hinton's
distillation loss against its formula on fixed logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsop_jax import losses


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
