"""Global covariance pooling with iterative matrix square-root normalisation (iSQRT-COV).

This is the second-order pooling layer P_a of every DSoP-Net auxiliary branch (paper Section III-A,
following Li et al., "Towards faster training of global covariance pooling networks by iterative
matrix square root normalization", CVPR 2018). It mirrors the official iSQRT-COV code step by step:

1. covariance of the C channels over the H*W positions, centred, divided by M = H*W;
2. pre-normalisation by the trace;
3. N coupled Newton-Schulz iterations (the last one updates Y only);
4. post-compensation by the square root of the trace;
5. the upper triangle including the diagonal, row-major, so C channels give C(C+1)/2 values.

Everything is plain jax.numpy, so autodiff gives the gradient, and it always computes in float32 at
the highest matmul precision whatever the input dtype, so bf16 activations do not degrade it.

MPN-COV (Li et al., "Is second-order information helpful for large-scale visual recognition?",
ICCV 2017), the eigendecomposition-based predecessor in Table II, is `eig_sqrtm`: the same
Sigma^{1/2} through `eigh`, with its own backward pass (below).
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST
_TRACE_FLOOR = 1e-12


def _bmm(a: jax.Array, b: jax.Array) -> jax.Array:
  """Batched float32 matmul at the highest precision (no TF32/bf16 passes on GPUs)."""
  return jnp.matmul(a, b, precision=_HIGHEST, preferred_element_type=jnp.float32)


def covariance(x: jax.Array) -> jax.Array:
  """Centred channel covariance over spatial positions.

  Args:
    x: features in NHWC layout, any float dtype.

  Returns:
    (B, C, C) float32 matrices Sigma = (1/M) Xc^T Xc, with Xc the M = H*W positions minus their mean
    (the official code's X I_hat X^T with I_hat = (1/M)(I - (1/M) 1 1^T)).
  """
  if x.ndim != 4:
    raise ValueError(f'covariance expects NHWC input with 4 dimensions, got shape {x.shape}.')
  b, h, w, c = x.shape
  x = x.astype(jnp.float32).reshape(b, h * w, c)
  xc = x - jnp.mean(x, axis=1, keepdims=True)
  return _bmm(jnp.swapaxes(xc, 1, 2), xc) / (h * w)


def newton_schulz_sqrtm(cov: jax.Array, num_iters: int = 5) -> jax.Array:
  """Matrix square root of SPD matrices by trace-normalised coupled Newton-Schulz iterations.

  Pre-normalises A = Sigma / tr(Sigma), iterates Y_k -> A^{1/2}, Z_k -> A^{-1/2} with
  Y_k = 1/2 Y_{k-1}(3I - Z_{k-1}Y_{k-1}), Z_k = 1/2 (3I - Z_{k-1}Y_{k-1}) Z_{k-1}, skips Z in the last
  iteration, and post-compensates by sqrt(tr(Sigma)).

  Args:
    cov: (B, C, C) symmetric positive semi-definite matrices.
    num_iters: number of Newton-Schulz iterations N >= 1. On singular (rank-deficient) inputs Z_k,
      which approximates the inverse root, diverges after about 20 iterations; the paper's 5 is safe.

  Returns:
    (B, C, C) float32 approximations of Sigma^{1/2}.
  """
  if num_iters < 1:
    raise ValueError(f'num_iters must be >= 1, got {num_iters}.')
  cov = cov.astype(jnp.float32)
  dim = cov.shape[-1]
  eye3 = 3.0 * jnp.eye(dim, dtype=jnp.float32)
  # The official code divides by the raw trace, which is 0 for all-zero or 1x1 feature maps and
  # turns the whole step into NaN. Any positive normaliser t gives the same result, since the
  # iterations return (Sigma / t)^{1/2} * sqrt(t); a floor keeps such inputs finite (output 0).
  trace = jnp.maximum(jnp.trace(cov, axis1=-2, axis2=-1), _TRACE_FLOOR)[:, None, None]
  a = cov / trace
  zy = 0.5 * (eye3 - a)  # First iteration from Y_0 = A, Z_0 = I.
  if num_iters == 1:
    y = _bmm(a, zy)
  else:
    y, z = _bmm(a, zy), zy
    for _ in range(num_iters - 2):
      zy = 0.5 * (eye3 - _bmm(z, y))
      y, z = _bmm(y, zy), _bmm(zy, z)
    y = 0.5 * _bmm(y, eye3 - _bmm(z, y))
  return y * jnp.sqrt(trace)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def eig_sqrtm(cov: jax.Array, rel_eps: float = 1e-5) -> jax.Array:
  """Matrix square root of SPD matrices by eigendecomposition (MPN-COV's matrix power 1/2).

  Sigma = U diag(lambda) U^T gives U diag(sqrt(lambda')) U^T, where lambda' drops (sets to 0) every
  eigenvalue at or below `rel_eps` times the largest: float32 `eigh` cannot resolve them, and the
  covariance of M positions has rank below M, so they are numerical noise (MPN-COV's code likewise
  keeps only the eigenvalues above a threshold).

  The backward pass is the Daleckii-Krein formula, dL/dSigma = U (K o U^T sym(G) U) U^T with
  K_ij = (f(l_i) - f(l_j)) / (l_i - l_j) = 1 / (sqrt(l'_i) + sqrt(l'_j)), and 0 where both are
  dropped. It is finite for repeated and zero eigenvalues, where differentiating `eigh` itself
  divides by l_i - l_j = 0.

  Deviation from the official MPN-COV code (jiangtaoxie/MPN-COV, mpn_cov_cpu.cpp / _gpu.cu): it
  keeps the eigenvalues above float epsilon (1.2e-7) times the largest, and its backward pass fills
  K only for kept x kept pairs. Here the floor is 1e-5 times the largest, and the backward pass is
  the exact derivative of the forward as computed (verified against float64 finite differences in
  covpool_test), so kept x dropped pairs contribute 1 / sqrt(l_kept). Eigenvalues between the two
  floors are float32 `eigh` noise on a rank-deficient covariance (M positions, C channels); keeping
  them puts weights up to 1 / (2 sqrt(l)), about 1e3 / sqrt(l_max), on noise directions in the
  backward pass. `rel_eps=float(jnp.finfo(jnp.float32).eps)` gives the official floor.

  Args:
    cov: (B, C, C) symmetric positive semi-definite matrices.
    rel_eps: eigenvalues at or below rel_eps * the largest count as 0.

  Returns:
    (B, C, C) float32 Sigma^{1/2}.
  """
  return _eig_sqrtm_fwd(cov, rel_eps)[0]


def _eigh(cov: jax.Array):
  lam, u = jnp.linalg.eigh(cov, symmetrize_input=True)
  return lam, u


def _eigh_one_matrix_a_call(cov: jax.Array):
  """`eigh` over the batch one matrix per LAPACK call (a loop), for the CPU.

  jaxlib's CPU eigh kernel spreads a batch over XLA's intra-op thread pool and holds its own pool
  thread until the pieces are done. When as many eigh kernels run at once as the pool has threads
  (MPN-COV with PSDR side branches: 5 at once; 2 threads on a 2-core machine), every pool thread
  waits for pieces that no thread is free to run, and the step never finishes (seen with jaxlib
  0.10.2). A single matrix runs inside the calling kernel, so nothing waits on the pool.
  """
  lam, u = jax.lax.map(_eigh, cov[:, None])
  return lam[:, 0], u[:, 0]


def _kept_roots(cov: jax.Array, rel_eps: float):
  lam, u = jax.lax.platform_dependent(cov.astype(jnp.float32), cpu=_eigh_one_matrix_a_call,
                                      default=_eigh)
  kept = lam > rel_eps * jnp.max(lam, axis=-1, keepdims=True)
  return u, jnp.where(kept, jnp.sqrt(jnp.where(kept, lam, 1.0)), 0.0)


def _eig_sqrtm_fwd(cov: jax.Array, rel_eps: float):
  u, roots = _kept_roots(cov, rel_eps)
  return _bmm(u * roots[:, None, :], jnp.swapaxes(u, -1, -2)), (u, roots)


def _eig_sqrtm_bwd(rel_eps: float, residuals, g: jax.Array):
  del rel_eps
  u, roots = residuals
  denominator = roots[:, :, None] + roots[:, None, :]
  k = jnp.where(denominator > 0, 1.0 / jnp.where(denominator > 0, denominator, 1.0), 0.0)
  ut = jnp.swapaxes(u, -1, -2)
  inner = _bmm(_bmm(ut, 0.5 * (g + jnp.swapaxes(g, -1, -2))), u)
  return (_bmm(_bmm(u, k * inner), ut),)


eig_sqrtm.defvjp(_eig_sqrtm_fwd, _eig_sqrtm_bwd)


def triu_vector(mat: jax.Array) -> jax.Array:
  """Upper triangle including the diagonal, row-major: (B, C, C) -> (B, C(C+1)/2)."""
  rows, cols = jnp.triu_indices(mat.shape[-1])
  return mat[:, rows, cols]


def isqrt_cov_pool(x: jax.Array, num_iters: int = 5) -> jax.Array:
  """iSQRT-COV pooling of NHWC features.

  Args:
    x: (B, H, W, C) features, any float dtype.
    num_iters: Newton-Schulz iterations (the paper and official code use 5).

  Returns:
    (B, C(C+1)/2) float32 representation.
  """
  return triu_vector(newton_schulz_sqrtm(covariance(x), num_iters))


def mpn_cov_pool(x: jax.Array) -> jax.Array:
  """MPN-COV pooling of NHWC features: the upper triangle of Sigma^{1/2} computed by `eigh`.

  Args:
    x: (B, H, W, C) features, any float dtype.

  Returns:
    (B, C(C+1)/2) float32 representation.
  """
  return triu_vector(eig_sqrtm(covariance(x)))


def gap_pool(x: jax.Array) -> jax.Array:
  """Global average pooling (the first-order alternative of the Table VII ablation), in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def pooled_dim(pool: str, channels: int) -> int:
  """Length of the pooled representation for `channels` input channels."""
  return channels if pool == 'gap' else channels * (channels + 1) // 2


def get_pool(pool: str, num_iters: int = 5) -> Callable[[jax.Array], jax.Array]:
  """The pooling function named `pool` ('isqrt_cov', 'mpn_cov' or 'gap')."""
  if pool == 'isqrt_cov':
    return lambda x: isqrt_cov_pool(x, num_iters)
  if pool == 'mpn_cov':
    return mpn_cov_pool
  if pool == 'gap':
    return gap_pool
  raise ValueError(f"pool must be one of 'isqrt_cov', 'mpn_cov', 'gap'; got {pool!r}.")
