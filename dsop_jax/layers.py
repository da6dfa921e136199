"""Convolution and normalisation definitions shared by the backbones and the auxiliary branches.

A backbone and the branches plugged into it must build their layers the same way (Section III-A:
"we reuse the building block of the first-order pooling network"), so both take their conv and norm
from here: PyTorch-equivalent defaults (bias-free convs with Kaiming fan-out init, BatchNorm with
momentum 0.9 in Flax's convention = 0.1 in PyTorch's, epsilon 1e-5), parameters in float32 and
activations in the configured compute dtype.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any
Dtype = Any

conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# Activations of the reduction layers by name: ReLU for ResNets, swish for EfficientNet (Sec. V-C).
ACTIVATIONS = {'relu': nn.relu, 'swish': nn.swish}


def conv_def(dtype: Dtype = jnp.float32) -> ModuleDef:
  """Bias-free convolution, Kaiming-normal (fan-out) initialised, computing in `dtype`."""
  return functools.partial(
      nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=conv_kernel_init)


def norm_def(train: bool, dtype: Dtype = jnp.float32) -> ModuleDef:
  """BatchNorm in batch-statistics mode when `train`, running averages otherwise."""
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
      param_dtype=jnp.float32)


class ConvNormAct(nn.Module):
  """1x1 convolution, BatchNorm and activation: the paper's "direct DR" operator (Section III-B)."""
  features: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(self.features, (1, 1), name='conv')(x)
    return self.act(self.norm(name='bn')(x))
