"""iSQRT-COV against an independent float64 NumPy port of the official PyTorch code (MPNCOV.py)."""

import jax
from jax.test_util import check_grads
import jax.numpy as jnp
import numpy as np
import pytest

from dsop_jax.models import covpool


def official_isqrt_cov(x_nhwc: np.ndarray, iter_n: int = 5) -> np.ndarray:
  """Float64 NumPy port of iSQRT-COV's Covpool, Sqrtm and Triuvec forward passes (NCHW there)."""
  x = np.asarray(x_nhwc, np.float64).transpose(0, 3, 1, 2)
  batch, dim, h, w = x.shape
  m = h * w
  x = x.reshape(batch, dim, m)
  i_hat = (-1.0 / m / m) * np.ones((m, m)) + (1.0 / m) * np.eye(m)
  cov = x @ i_hat @ x.transpose(0, 2, 1)
  i3 = 3.0 * np.eye(dim)[None]
  norm_a = (1.0 / 3.0) * (cov * i3).sum(axis=(1, 2))
  a = cov / norm_a[:, None, None]
  if iter_n < 2:
    yzy = a @ (0.5 * (i3 - a))
  else:
    zy = 0.5 * (i3 - a)
    y, z = a @ zy, zy
    for _ in range(1, iter_n - 1):
      zy = 0.5 * (i3 - z @ y)
      y, z = y @ zy, zy @ z
    yzy = 0.5 * y @ (i3 - z @ y)
  y = yzy * np.sqrt(norm_a)[:, None, None]
  index = np.nonzero(np.triu(np.ones((dim, dim))).reshape(dim * dim))[0]
  return y.reshape(batch, dim * dim)[:, index]


def _features(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize('shape', [(2, 4, 4, 8), (3, 7, 5, 16), (1, 3, 3, 33), (2, 14, 14, 64)])
@pytest.mark.parametrize('num_iters', [1, 2, 5])
def test_forward_matches_official_float64(shape, num_iters):
  x = _features(shape)
  got = covpool.isqrt_cov_pool(jnp.asarray(x), num_iters)
  want = official_isqrt_cov(x, num_iters)
  c = shape[-1]
  assert got.shape == (shape[0], c * (c + 1) // 2)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize('shape', [(2, 4, 4, 6), (1, 5, 3, 9)])
def test_gradient_matches_finite_differences_of_float64_reference(shape):
  x = _features(shape, seed=1).astype(np.float64)
  weights = np.random.default_rng(2).normal(size=(shape[0], shape[-1] * (shape[-1] + 1) // 2))
  loss_ref = lambda v: float(np.sum(weights * official_isqrt_cov(v)))
  loss = lambda v: jnp.sum(jnp.asarray(weights, jnp.float32) * covpool.isqrt_cov_pool(v))
  grad = np.asarray(jax.grad(loss)(jnp.asarray(x, jnp.float32)))
  rng = np.random.default_rng(3)
  eps = 1e-6
  for _ in range(25):
    idx = tuple(rng.integers(0, n) for n in shape)
    step = np.zeros_like(x)
    step[idx] = eps
    numeric = (loss_ref(x + step) - loss_ref(x - step)) / (2 * eps)
    assert grad[idx] == pytest.approx(numeric, rel=2e-3, abs=2e-3 * float(np.abs(grad).max())), idx


def test_gradient_passes_check_grads():
  x = jnp.asarray(_features((2, 3, 3, 5), seed=4))
  check_grads(lambda v: covpool.isqrt_cov_pool(v, 3), (x,), order=1, modes=('rev',),
                            atol=5e-2, rtol=5e-2, eps=1e-2)


def test_bfloat16_input_is_pooled_in_float32():
  # The reference sees exactly the bf16-rounded values; a float32 pipeline must then agree to float32
  # precision. Computing in bf16 would be off by ~1e-2 relative.
  x = jnp.asarray(_features((2, 8, 8, 32), seed=5)).astype(jnp.bfloat16)
  got = covpool.isqrt_cov_pool(x)
  want = official_isqrt_cov(np.asarray(x.astype(jnp.float32)))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5 * np.abs(want).max())
  grad = jax.grad(lambda v: jnp.sum(covpool.isqrt_cov_pool(v)))(x)
  assert grad.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grad)))


def _spd(dim, cond, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
  eigs = np.linspace(1.0, cond, dim) * 0.3
  return (q * eigs) @ q.T


def test_newton_schulz_converges_to_eigh_square_root():
  mats = np.stack([_spd(16, 4.0, s) for s in range(3)])
  vals, vecs = np.linalg.eigh(mats)
  exact = (vecs * np.sqrt(vals)[:, None, :]) @ vecs.transpose(0, 2, 1)
  errors = []
  for n in (1, 2, 3, 5, 8, 12):
    approx = np.asarray(covpool.newton_schulz_sqrtm(jnp.asarray(mats, jnp.float32), n))
    errors.append(np.abs(approx - exact).max() / np.abs(exact).max())
  # Falling with every added iteration until float32's rounding floor (about 4e-7 here, reached by
  # 8 iterations: whether 12 then lands a hair lower depends on the compiler's rounding).
  assert all(b < a or b < 1e-6 for a, b in zip(errors, errors[1:])), errors
  assert errors[0] > 1e-2 and errors[3] > 1e-3 and errors[-1] < 1e-5, errors


def test_covariance_is_biased_sample_covariance_over_positions():
  x = _features((2, 5, 4, 6), seed=6)
  got = np.asarray(covpool.covariance(jnp.asarray(x)))
  for b in range(2):
    want = np.cov(x[b].reshape(20, 6).astype(np.float64), rowvar=False, bias=True)
    np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)


def test_triu_vector_is_row_major_upper_triangle_with_diagonal():
  mat = jnp.arange(9.0).reshape(1, 3, 3)
  np.testing.assert_array_equal(covpool.triu_vector(mat), [[0, 1, 2, 4, 5, 8]])


def test_gap_pool_and_dims():
  x = _features((2, 3, 4, 7), seed=7)
  np.testing.assert_allclose(covpool.gap_pool(jnp.asarray(x)), x.mean(axis=(1, 2)), rtol=1e-6)
  assert covpool.pooled_dim('isqrt_cov', 256) == 32896
  assert covpool.pooled_dim('gap', 256) == 256
  assert covpool.pooled_dim('mpn_cov', 256) == 32896
  with pytest.raises(ValueError, match="pool must be one of 'isqrt_cov', 'mpn_cov', 'gap'"):
    covpool.get_pool('max')
  with pytest.raises(ValueError, match='num_iters must be >= 1'):
    covpool.newton_schulz_sqrtm(jnp.eye(2)[None], 0)


@pytest.mark.parametrize('shape, value', [((2, 1, 1, 8), 'normal'), ((2, 4, 4, 8), 'zeros'),
                                          ((2, 4, 4, 8), 'constant')])
def test_degenerate_inputs_give_finite_zero_output_and_gradient(shape, value):
  """Zero covariance (a 1x1 map, all-zero or spatially constant features) must not produce NaN."""
  x = {'normal': jnp.asarray(_features(shape)), 'zeros': jnp.zeros(shape),
       'constant': jnp.ones(shape) * 3.0}[value]
  out = covpool.isqrt_cov_pool(x)
  np.testing.assert_array_equal(out, np.zeros_like(out))
  grad = jax.grad(lambda v: jnp.sum(covpool.isqrt_cov_pool(v)))(x)
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_rank_deficient_covariance_is_finite_and_close_to_eigh():
  x = jnp.asarray(_features((2, 2, 2, 16), seed=8))  # 4 positions: rank <= 3 of 16.
  # Z_k approximates the inverse root, so on singular inputs it diverges after ~20 iterations;
  # at the paper's 5 and up to ~20 the square root is accurate.
  sqrtm = covpool.newton_schulz_sqrtm(covpool.covariance(x), num_iters=10)
  vals, vecs = np.linalg.eigh(np.asarray(covpool.covariance(x), np.float64))
  exact = (vecs * np.sqrt(np.clip(vals, 0, None))[:, None, :]) @ vecs.transpose(0, 2, 1)
  np.testing.assert_allclose(np.asarray(sqrtm), exact, atol=1e-3 * np.abs(exact).max())
  grad = jax.grad(lambda v: jnp.sum(covpool.isqrt_cov_pool(v)))(x)
  assert bool(jnp.all(jnp.isfinite(grad)))


@pytest.mark.parametrize('scale', [1e-5, 1e15])
def test_small_and_huge_activations_scale_exactly(scale):
  """iSQRT-COV is positively homogeneous, pool(s x) = s pool(x); float32 keeps that (and finite
  gradients) from 1e-5 to 1e15 thanks to the trace normalisation. Below about 1e-6 the trace falls
  under the 1e-12 floor that keeps all-zero maps finite, and the output shrinks towards 0."""
  x = jnp.asarray(_features((2, 4, 4, 8), seed=3))
  np.testing.assert_allclose(covpool.isqrt_cov_pool(x * scale) / scale, covpool.isqrt_cov_pool(x),
                             rtol=1e-4, atol=1e-5)
  grad = jax.grad(lambda v: jnp.sum(covpool.isqrt_cov_pool(v)))(x * scale)
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_overflowing_activations_give_nonfinite_output_not_silent_garbage():
  """Beyond float32's range (covariance > 3e38) the pooled output is inf/NaN, which the train
  step's non-finite guard rejects and reports (train_test); it is never a finite wrong value."""
  x = jnp.asarray(_features((2, 4, 4, 8), seed=3)) * 1e20
  assert not bool(jnp.all(jnp.isfinite(covpool.isqrt_cov_pool(x))))


def _eigh_sqrtm64(cov: np.ndarray) -> np.ndarray:
  vals, vecs = np.linalg.eigh(np.asarray(cov, np.float64))
  return (vecs * np.sqrt(np.clip(vals, 0, None))[..., None, :]) @ np.swapaxes(vecs, -1, -2)


@pytest.mark.parametrize('shape', [(2, 6, 6, 8), (2, 2, 2, 16), (1, 14, 14, 64)])
def test_mpn_cov_forward_is_the_float64_square_root(shape):
  """Full-rank and rank-deficient (4 positions, 16 channels) covariances; the reference takes the
  covariance in float64 too, where a rank-deficient one's null eigenvalues are ~1e-17, not noise."""
  features = _features(shape, seed=11)
  x = jnp.asarray(features)
  cov = covpool.covariance(x)
  centred = features.astype(np.float64).reshape(shape[0], -1, shape[-1])
  centred -= centred.mean(axis=1, keepdims=True)
  exact = _eigh_sqrtm64(np.swapaxes(centred, 1, 2) @ centred / centred.shape[1])
  np.testing.assert_allclose(covpool.eig_sqrtm(cov), exact, atol=2e-5 * np.abs(exact).max())
  rows, cols = np.triu_indices(shape[-1])
  np.testing.assert_allclose(covpool.mpn_cov_pool(x), exact[:, rows, cols],
                             atol=2e-5 * np.abs(exact).max())


def test_mpn_cov_gradient_matches_float64_finite_differences():
  cov = covpool.covariance(jnp.asarray(_features((1, 6, 6, 8), seed=12)))
  weights = np.random.default_rng(13).normal(size=(8, 8))
  grad = jax.grad(lambda c: jnp.sum(covpool.eig_sqrtm(c) * weights))(cov)[0]
  base, eps = np.asarray(cov[0], np.float64), 1e-5
  numeric = np.zeros((8, 8))
  for i in range(8):
    for j in range(i, 8):  # Symmetric perturbations: the gradient is the symmetric one.
      d = np.zeros((8, 8))
      d[i, j] = d[j, i] = eps
      diff = np.sum((_eigh_sqrtm64(base + d) - _eigh_sqrtm64(base - d)) * weights) / (2 * eps)
      numeric[i, j] = numeric[j, i] = diff if i == j else diff / 2
  np.testing.assert_allclose(grad, numeric, atol=1e-4 * np.abs(numeric).max())


def test_mpn_cov_gradient_is_finite_at_repeated_and_zero_eigenvalues():
  """Differentiating eigh divides by l_i - l_j; the Daleckii-Krein backward pass does not. At
  A = c I (one eigenvalue, repeated), d sqrt(A) = dA / (2 sqrt(c)) exactly."""
  weights = np.random.default_rng(14).normal(size=(5, 5))
  grad = jax.grad(lambda c: jnp.sum(covpool.eig_sqrtm(c) * weights))(4.0 * jnp.eye(5)[None])[0]
  np.testing.assert_allclose(grad, (weights + weights.T) / 2 / (2 * 2.0), rtol=1e-5, atol=1e-6)
  for x in (jnp.zeros((2, 4, 4, 8)), jnp.asarray(_features((2, 2, 2, 16), seed=15))):
    out = covpool.mpn_cov_pool(x)
    grad = jax.grad(lambda v: jnp.sum(covpool.mpn_cov_pool(v)))(x)
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(jnp.isfinite(grad)))
  np.testing.assert_array_equal(covpool.mpn_cov_pool(jnp.zeros((2, 4, 4, 8))), 0.0)


def test_mpn_cov_on_the_cpu_decomposes_one_matrix_per_lapack_call():
  """jaxlib's CPU eigh kernel spreads a batch over XLA's intra-op pool and holds a pool thread
  meanwhile; several such kernels at once (MPN-COV with PSDR side branches on 2 cores) hung the
  step for good. On the CPU each LAPACK call gets one matrix, which runs inside its own kernel."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 3, 16)), jnp.float32)
  hlo = jax.jit(covpool.mpn_cov_pool).lower(x).compile().as_text()
  calls = [line for line in hlo.splitlines() if 'custom_call_target="lapack_ssyevd' in line]
  assert calls and all('custom-call(' in c and c.split('=', 1)[1].lstrip(' (').startswith(
      'f32[1,16,16]') for c in calls), calls
