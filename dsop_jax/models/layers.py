"""Convolution and normalisation definitions shared by the backbones and the auxiliary branches.

A backbone and the branches plugged into it must build their layers the same way (Section III-A:
"we reuse the building block of the first-order pooling network"), so both take their conv and norm
from here: PyTorch-equivalent defaults (bias-free convs with Kaiming fan-out init, BatchNorm with
momentum 0.9 in Flax's convention = 0.1 in PyTorch's, epsilon 1e-5), parameters in float32 and
activations in the configured compute dtype.
"""

import functools
from typing import Any, Callable, Dict

import flax.linen as nn
from flax.linen import normalization as flax_normalization
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


def norm_def(train: bool, dtype: Dtype = jnp.float32, group_size: int = 0) -> ModuleDef:
  """BatchNorm in batch-statistics mode when `train`, running averages otherwise.

  `group_size` > 0 normalises each run of `group_size` consecutive examples of the batch with its
  own statistics in training (`GroupBatchNorm`: the paper's PyTorch DataParallel runs, 32 images per
  GPU); 0 uses the whole global batch. Evaluation always uses the running averages, so the
  variables and the deployed network are the same either way.
  """
  if train and group_size:
    return functools.partial(GroupBatchNorm, group_size=group_size, momentum=0.9, epsilon=1e-5,
                             dtype=dtype)
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
      param_dtype=jnp.float32)


class GroupBatchNorm(nn.Module):
  """Training-mode BatchNorm over groups of `group_size` consecutive examples (the leading axis),
  with the variables of `nn.BatchNorm` ('scale', 'bias'; 'mean', 'var' in 'batch_stats').

  Each group is normalised with its own mean and biased variance, computed and applied by Flax's
  own BatchNorm functions (float32 statistics, E[x^2] - E[x]^2 clipped at 0); the running averages
  move towards the mean over groups of those statistics. A batch of at most `group_size` examples
  is one group: then every operation is `nn.BatchNorm`'s, so results are bit-identical. Under a
  mesh that splits the batch into shards of whole groups, each group's statistics stay on its
  device.
  """
  group_size: int
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), features)
    groups = max(1, x.shape[0] // self.group_size)
    if x.shape[0] % groups:
      raise ValueError(f'config.model.bn_group_size = {self.group_size} is invalid: it must divide '
                       f'the batch of {x.shape[0]} examples.')
    grouped = x if groups == 1 else x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
    axes = tuple(range(0 if groups == 1 else 1, grouped.ndim - 1))  # All but groups, features.
    mean, var = flax_normalization._compute_stats(grouped, axes, dtype=self.dtype)  # pylint: disable=protected-access
    if not self.is_initializing():
      mean_over_groups = lambda stat: stat if groups == 1 else stat.mean(0)  # noqa: E731
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean_over_groups(mean)
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * mean_over_groups(var)
    y = flax_normalization._normalize(  # pylint: disable=protected-access
        self, grouped, mean, var, axes, (grouped.ndim - 1,), self.dtype, jnp.float32, self.epsilon,
        True, True, nn.initializers.zeros, nn.initializers.ones)
    return y.reshape(x.shape)


def classifier(x: jax.Array, num_classes: int, *, dtype: Dtype, train: bool, name: str,
               dropout: float = 0.0, kernel_init: Any = None) -> jax.Array:
  """Every classifier of the package (O_a of a branch, the second-order head's, a backbone's):
  optional dropout, then a dense layer `name` with float32 parameters; float32 logits. Call it in a
  compact method: the layers become submodules of the caller."""
  if dropout:
    x = nn.Dropout(dropout, deterministic=not train)(x)
  init = {} if kernel_init is None else {'kernel_init': kernel_init}
  logits = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32, name=name, **init)(x)
  return logits.astype(jnp.float32)


def backbone_head(head: Any, x: jax.Array, features: Dict[str, jax.Array], *, num_classes: int,
                  dtype: Dtype, train: bool, bn_group_size: int = 0, dropout: float = 0.0,
                  kernel_init: Any = None) -> jax.Array:
  """A backbone's end on its last feature map `x`: the second-order `head` factory when one is
  given (called with (num_classes=, dtype=, bn_group_size=, name='gsop'); its features join
  `features`), else the first-order GAP ('pre_logits') and `classifier` named 'head'. Returns
  float32 logits; call it in the backbone's compact method."""
  if head is not None:
    logits, head_features = head(num_classes=num_classes, dtype=dtype, bn_group_size=bn_group_size,
                                 name='gsop')(x, train)
    features.update(head_features)
    return logits
  x = jnp.mean(x, axis=(1, 2))
  features['pre_logits'] = x
  return classifier(x, num_classes, dtype=dtype, train=train, name='head', dropout=dropout,
                    kernel_init=kernel_init)


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
