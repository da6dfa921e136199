"""What an auxiliary branch needs to know about a backbone stage, and the stage loop shared by backbones.

Section III-A builds the first part of a branch (S_a) from "the building block of the first-order
pooling network" at the stage the branch is plugged into, with no down-sampling. Every backbone
therefore describes its stages as `StageSpec`s: the stage's feature name, block count, output
channels and a block factory; the branch builds its blocks from the same factory with stride 1.
"""

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence

import jax

ModuleDef = Any


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One backbone stage.

  Attributes:
    name: feature name of the stage output ('stage2' ... for ImageNet, 'stage1' ... for CIFAR).
    num_blocks: blocks in the stage.
    channels: output channels of every block of the stage.
    stride: stride of the first block (the others use 1).
    block: block factory taking (conv=, norm=, strides=, name=) and returning a module.
    preact: True when blocks output un-normalised sums (pre-activation networks), so a branch
      ends its S_a with the norm + activation the backbone applies before its own pooling.
  """
  name: str
  num_blocks: int
  channels: int
  stride: int
  block: Callable[..., Any]
  preact: bool = False


def block_feature_name(stage: str, block: int) -> str:
  """Feature name of the output of block `block` (1-based) of `stage`, e.g. 'stage3_block2'."""
  return f'{stage}_block{block}'


def run_stages(x: jax.Array, specs: Sequence[StageSpec], *, conv: ModuleDef, norm: ModuleDef,
               features: Dict[str, jax.Array],
               block_kwargs: Optional[Callable[[int, int], Dict[str, Any]]] = None) -> jax.Array:
  """Applies every block of every stage, recording each block and stage output in `features`.

  Must be called inside a compact method: blocks become submodules named 'stage2_block1', ...
  `block_kwargs(index, total)` adds keyword arguments to the block at 0-based position `index` of
  all `total` blocks (EfficientNet's stochastic-depth rate grows with the position).
  """
  total, index = sum(spec.num_blocks for spec in specs), 0
  for spec in specs:
    for j in range(spec.num_blocks):
      stride = spec.stride if j == 0 else 1
      name = block_feature_name(spec.name, j + 1)
      extra = block_kwargs(index, total) if block_kwargs else {}
      x = spec.block(conv=conv, norm=norm, strides=(stride, stride), name=name, **extra)(x)
      features[name] = x
      index += 1
    features[spec.name] = x
  return x


def branch_block_specs(backbone: Any) -> Dict[str, StageSpec]:
  """{name: spec} of every place a branch can take its S_a blocks from: the backbone's stages, and
  the spec of what its first-order pooling reads when that is not a stage's output (EfficientNet's
  head convolution, `branch_end_stage()`)."""
  specs = {s.name: s for s in backbone.stage_specs()}
  end = getattr(backbone, 'branch_end_stage', None)
  if end is not None and end() is not None:
    specs[end().name] = end()
  return specs
