"""Detachable auxiliary branches: S_a blocks, P_a reduction + second-order pooling, O_a classifier.

Each branch follows Section III-A of the paper:
- S_a: `num_blocks` blocks built from the backbone's own block definition at the stage the branch is
  plugged into, with no down-sampling (so input and output keep the stage's shape);
- P_a: an optional dimensionality reduction to the target channel count, either "direct DR" (one
  1x1 conv + BN + ReLU, [19], [21]) or PSDR (Section III-B / Eq. 4: a chain of 1x1 conv + BN + ReLU
  layers, the first halving the channels and each next one keeping floor(delta * C), each
  intermediate layer carrying its own supervised side branch), then iSQRT-COV (or GAP for the
  Table VII ablation);
- O_a: optional dropout and a dense classifier.

A branch returns a dict of logits: its own under its name (e.g. 'a_pds2') and, with PSDR side
branches, one per intermediate layer under '<name>_psdr<i>'.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsop_jax.models import covpool
from dsop_jax.models import layers
from dsop_jax.models import stages

POOLS = ('isqrt_cov', 'gap')
REDUCTIONS = ('direct', 'psdr')


@dataclasses.dataclass(frozen=True)
class BranchSpec:
  """Where a branch is plugged in and how it is built (all hashable, so it can be a module field).

  Attributes:
    name: the paper's name ('a_pds2', ...); also the branch's top-level variable key.
    stage: name of the backbone stage it belongs to ('stage2', ...); selects the block definition.
    stage_index: 0-based position of that stage among the backbone's stages (selects its beta).
    attach: backbone feature it reads ('stage2' or 'stage1_block3', ...).
    num_blocks: S_a blocks (0 allowed: pooling straight on the backbone feature).
    pool: 'isqrt_cov' or 'gap'.
    pool_channels: target channels before pooling; a DR is inserted only when the feature has more.
    reduction: 'direct' (one 1x1 conv+BN+ReLU) or 'psdr' (Eq. 4 chain).
    psdr_delta: decay factor delta of Eq. 4.
    psdr_aux: whether PSDR intermediate layers carry supervised side branches.
    num_iters: Newton-Schulz iterations.
    dropout: dropout rate before the classifier.
    activation: of the reduction layers, a key of `layers.ACTIVATIONS` (the backbone's own).
    weight: which weight of Eq. 1 its heads carry: 'beta' (its stage's) or 'alpha' (the main
      head's: the side branches of the second-order head's PSDR supervise the main head's
      reduction).
  """
  name: str
  stage: str
  stage_index: int
  attach: str
  num_blocks: int
  pool: str = 'isqrt_cov'
  pool_channels: int = 256
  reduction: str = 'direct'
  psdr_delta: float = 0.25
  psdr_aux: bool = True
  num_iters: int = 5
  dropout: float = 0.0
  activation: str = 'relu'
  weight: str = 'beta'


def psdr_channels(in_channels: int, target: int, delta: float) -> List[int]:
  """Output channels of the PSDR intermediate layers (Eq. 4), ending exactly at `target`.

  C_1 = 0.5 C_0 and C_i = floor(delta C_{i-1}), never going below the target; the last layer is the
  one that reaches the target (Section IV-B: "we directly reduce the number of current channels to
  the desired number"). E.g. 2048 -> [1024, 256] for target 256, delta 0.25.
  """
  if not 0.0 < delta < 1.0:
    raise ValueError(f'psdr_delta must lie in (0, 1), got {delta}.')
  if in_channels <= target:
    return []
  chain = [max(in_channels // 2, target)]
  while chain[-1] > target:
    chain.append(max(int(delta * chain[-1]), target))
  return chain


def reduction_channels(spec: BranchSpec, in_channels: int) -> List[int]:
  """Channels after each reduction layer of a branch's P_a part (empty when there is none)."""
  if spec.pool == 'gap' or in_channels <= spec.pool_channels:
    return []
  if spec.reduction == 'psdr':
    return psdr_channels(in_channels, spec.pool_channels, spec.psdr_delta)
  return [spec.pool_channels]


def side_branch_names(spec: BranchSpec, in_channels: int) -> List[str]:
  """Names of the supervised PSDR side branches a branch emits besides its own logits."""
  if spec.reduction != 'psdr' or not spec.psdr_aux:
    return []
  return [f'{spec.name}_psdr{i + 1}' for i in range(len(reduction_channels(spec, in_channels)) - 1)]


def psdr(x: jax.Array, chain: List[int], conv: Any, norm: Any, act: Any,
         on_intermediate: Optional[Callable[[int, jax.Array], None]] = None) -> jax.Array:
  """PSDR (Eq. 4): 1x1 conv + BN + activation layers 'psdr1', 'psdr2', ... to the channels of
  `chain` (`psdr_channels`), as submodules of the calling compact method; `on_intermediate(i, y)`
  sees the output of every layer but the last (where side branches plug in)."""
  for i, channels in enumerate(chain):
    x = layers.ConvNormAct(channels, conv, norm, act, name=f'psdr{i + 1}')(x)
    if on_intermediate is not None and i < len(chain) - 1:
      on_intermediate(i, x)
  return x


class PooledClassifier(nn.Module):
  """Pooling (P_a) and O_a: optional DR to the target, pooling, dropout and a dense layer."""
  pool: str
  num_classes: int
  reduce_to: Optional[int] = None
  num_iters: int = 5
  dropout: float = 0.0
  dtype: Any = jnp.float32
  activation: str = 'relu'
  bn_group_size: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.reduce_to is not None:
      x = layers.ConvNormAct(self.reduce_to, layers.conv_def(self.dtype),
                             layers.norm_def(train, self.dtype, self.bn_group_size),
                             layers.ACTIVATIONS[self.activation], name='dr')(x)
    x = covpool.get_pool(self.pool, self.num_iters)(x)
    return layers.classifier(x, self.num_classes, dtype=self.dtype, train=train, name='fc',
                             dropout=self.dropout)


class AuxBranch(nn.Module):
  """One detachable auxiliary branch B_a^i; its variables live under its own name."""
  spec: BranchSpec
  stage: stages.StageSpec
  num_classes: int
  dtype: Any = jnp.float32
  bn_group_size: int = 0  # Examples per BatchNorm statistics group in training.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> Dict[str, jax.Array]:
    spec = self.spec
    conv = layers.conv_def(self.dtype)
    norm = layers.norm_def(train, self.dtype, self.bn_group_size)
    for i in range(spec.num_blocks):  # S_a: the stage's own block, stride 1.
      x = self.stage.block(conv=conv, norm=norm, strides=(1, 1), name=f'block{i + 1}')(x)
    if self.stage.preact:  # The BN-ReLU a pre-activation backbone applies before pooling.
      x = nn.relu(norm(name='bn_final')(x))
    head = lambda reduce_to, name: PooledClassifier(  # noqa: E731
        spec.pool, self.num_classes, reduce_to, spec.num_iters, spec.dropout, self.dtype,
        spec.activation, self.bn_group_size, name=name)
    act = layers.ACTIVATIONS[spec.activation]
    chain = reduction_channels(spec, x.shape[-1])
    outputs = {}
    if spec.reduction == 'psdr' and chain:
      sides = side_branch_names(spec, x.shape[-1])

      def side_branch(i, y):  # Reduce directly to the target, pool, classify.
        if sides:
          outputs[sides[i]] = head(spec.pool_channels, f'psdr{i + 1}_head')(y, train)

      x = psdr(x, chain, conv, norm, act, side_branch)
      outputs[spec.name] = head(None, 'head')(x, train)
    else:
      outputs[spec.name] = head(chain[-1] if chain else None, 'head')(x, train)
    return outputs
