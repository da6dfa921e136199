"""ImageNet ResNets (He et al. 2016) that return their intermediate features.

Architecturally identical to torchvision's ResNet-18/34/50/101/152 (v1.5: the stride of a bottleneck
sits in its 3x3 conv), so parameter counts match torchvision exactly. SE-ResNeXt-101 32x4d (a
knowledge-distillation teacher of Table II) follows the reference SENet code (Hu et al. 2018, as
packaged in `pretrainedmodels`): ResNeXt bottlenecks of 32 groups of 4 channels per 64 filters,
each with a squeeze-and-excitation gate (reduction 16, biased 1x1 layers), 48,955,416 parameters. `last_stride=1` gives the
paper's "-s1" variants (Section V-C, Table II): stage 5 keeps the 14x14 resolution of stage 4.
`head=` replaces GAP + FC by another head, e.g. `gsop.GSoPHead` for the second-order network.

A call returns `(logits, features)`; `features` holds 'stem', every block output
('stage2_block1', ...), every stage output ('stage2' ... 'stage5') and 'pre_logits', which is what the
DSoP-Net auxiliary branches attach to. `jax.jit` prunes the features a caller does not use.
"""

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsop_jax.models import layers
from dsop_jax.models import stages

ModuleDef = Any


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity or 1x1-projection shortcut (ResNet-18/34)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array] = nn.relu
  strides: Tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides, padding=1, name='conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = self.conv(self.filters, (3, 3), padding=1, name='conv2')(y)
    y = self.norm(name='bn2')(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name='proj_conv')(residual)
      residual = self.norm(name='proj_bn')(residual)
    return self.act(residual + y)


class SqueezeExcitation(nn.Module):
  """Channel gates (Hu et al. 2018): GAP -> dense C/r (bias) -> ReLU -> dense C (bias) -> sigmoid;
  the dense layers are the reference code's biased 1x1 convolutions on the pooled vector.
  `squeeze_channels` > 0 sets the squeezed width directly and `act` its activation (EfficientNet:
  a quarter of the block's input channels, swish); `kernel_init` initialises both dense kernels
  (None: Flax's default; EfficientNet: its reference rule)."""
  reduction: int = 16
  squeeze_channels: int = 0
  act: Callable[[jax.Array], jax.Array] = nn.relu
  kernel_init: Optional[Callable[..., jax.Array]] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    init = {} if self.kernel_init is None else {'kernel_init': self.kernel_init}
    dense = functools.partial(nn.Dense, dtype=x.dtype, param_dtype=jnp.float32, **init)
    gate = jnp.mean(x, axis=(1, 2), keepdims=True)
    squeezed = self.squeeze_channels or channels // self.reduction
    gate = self.act(dense(squeezed, name='fc1')(gate))
    return x * nn.sigmoid(dense(channels, name='fc2')(gate))


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (optionally grouped, carrying the stride) -> 1x1 with 4x expansion.

  The inner width is `width`, else `filters * width_per_group // 64 * groups` when
  `width_per_group` is set (ResNeXt "32x4d": groups 32, width_per_group 4), else `filters`.
  `se_reduction` > 0 adds a squeeze-and-excitation gate before the residual sum (SE-ResNeXt).
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array] = nn.relu
  strides: Tuple[int, int] = (1, 1)
  width: Optional[int] = None
  groups: int = 1
  width_per_group: int = 0
  se_reduction: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = self.width or (self.filters * self.width_per_group // 64 * self.groups
                           if self.width_per_group else self.filters)
    residual = x
    y = self.conv(width, (1, 1), name='conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = self.conv(width, (3, 3), self.strides, padding=1, feature_group_count=self.groups,
                  name='conv2')(y)
    y = self.act(self.norm(name='bn2')(y))
    y = self.conv(self.filters * 4, (1, 1), name='conv3')(y)
    y = self.norm(name='bn3')(y)
    if self.se_reduction:
      y = SqueezeExcitation(self.se_reduction, name='se')(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), self.strides, name='proj_conv')(residual)
      residual = self.norm(name='proj_bn')(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  """ImageNet ResNet with a 7x7 stem, four stages (conv2_x ... conv5_x), GAP and a dense head.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block_cls: BasicBlock or BottleneckBlock.
    num_classes: classifier outputs.
    num_filters: width of the stem and of stage 2 (64 in the paper).
    last_stride: stride of stage 5: 2 is the standard network ("s2"), 1 the paper's "s1".
    dtype: compute dtype of activations (parameters stay float32); logits are float32.
    head: None for GAP + a dense layer ('head'), else a module factory called with
      (num_classes=, dtype=, bn_group_size=, name='gsop') whose module maps the stage-5 output
      and `train` to (logits, features); its features join the backbone's ('pre_logits' among them).
    bn_group_size: examples per BatchNorm statistics group in training (`layers.norm_def`).
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int = 1000
  num_filters: int = 64
  last_stride: int = 2
  dtype: Any = jnp.float32
  head: Optional[ModuleDef] = None
  bn_group_size: int = 0

  def stage_specs(self) -> List[stages.StageSpec]:
    """The four stages 'stage2' ... 'stage5' as the auxiliary branches see them."""
    block = getattr(self.block_cls, 'func', self.block_cls)  # A functools.partial's class.
    expansion = 4 if block is BottleneckBlock else 1
    specs = []
    for i, num_blocks in enumerate(self.stage_sizes):
      filters = self.num_filters * 2**i
      stride = 1 if i == 0 else (self.last_stride if i == 3 else 2)
      specs.append(stages.StageSpec(
          name=f'stage{i + 2}', num_blocks=num_blocks, channels=filters * expansion, stride=stride,
          block=functools.partial(self.block_cls, filters=filters)))
    return specs

  def head_input(self) -> Tuple[str, int]:
    """(feature name, channels) of what the head pools: the last stage's output."""
    last = self.stage_specs()[-1]
    return last.name, last.channels

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    conv = layers.conv_def(self.dtype)
    norm = layers.norm_def(train, self.dtype, self.bn_group_size)
    x = x.astype(self.dtype)
    x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name='conv_init')(x)
    x = nn.relu(norm(name='bn_init')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = {'stem': x}
    x = stages.run_stages(x, self.stage_specs(), conv=conv, norm=norm, features=features)
    logits = layers.backbone_head(self.head, x, features, num_classes=self.num_classes,
                                  dtype=self.dtype, train=train, bn_group_size=self.bn_group_size)
    return logits, features


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock)
SEResNeXt101_32x4d = functools.partial(
    ResNet, stage_sizes=(3, 4, 23, 3),
    block_cls=functools.partial(BottleneckBlock, groups=32, width_per_group=4, se_reduction=16))
