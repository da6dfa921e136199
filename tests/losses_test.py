"""Eq. 1 against a direct NumPy computation; per-head terms; weight/head mismatches."""

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
