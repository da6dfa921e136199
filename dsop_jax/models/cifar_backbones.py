"""CIFAR backbones of the paper's Tables IV-VI and IX, returning their intermediate features.

- Pre-activation ResNets (He et al., "Identity mappings in deep residual networks", ECCV 2016):
  ResNet-20 and -110 with basic blocks, ResNet-164 with bottlenecks; 16-32-64 base widths.
- Wide ResNets (Zagoruyko & Komodakis 2016): WRN-22-10 and WRN-28-10, pre-activation basic blocks
  with widths 16k-32k-64k, so they are `PreActResNet`s with other stage sizes and widths.
- The post-activation CIFAR ResNet-20 (He et al., CVPR 2016, Section 4.2) as the CIFAR code both
  optimiser papers of Table IX(a) train it (AdaHessian's and RAdam's, from the "bearpaw"
  pytorch-classification models/cifar/resnet.py): conv-BN-ReLU stem of 16 channels, basic blocks
  conv-BN-ReLU-conv-BN, sum, ReLU, 1x1 conv + BN projections where the shape changes; 272,474
  parameters for 10 classes.
- ResNeXt-29 (Xie et al. 2017) 8x64d and 16x64d, the paper's ResNeXt-64-8 / ResNeXt-64-16:
  post-activation grouped bottlenecks, stage outputs 256-512-1024.

All have three stages named 'stage1' ... 'stage3' (the paper's Stage 1-3) with strides 1, 2, 2; a call
returns `(logits, features)` with 'stem', every block output ('stage1_block1', ...), every stage
output and 'pre_logits'. Where a stage changes shape, the shortcut is a 1x1 projection (option B).
"""

import functools
from typing import Any, Callable, Dict, List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsop_jax.models import layers
from dsop_jax.models import resnet
from dsop_jax.models import stages

ModuleDef = Any


class PreActBasicBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut; the sum is left un-normalised."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array] = nn.relu
  strides: Tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pre = self.act(self.norm(name='bn1')(x))
    y = self.conv(self.filters, (3, 3), self.strides, padding=1, name='conv1')(pre)
    y = self.act(self.norm(name='bn2')(y))
    y = self.conv(self.filters, (3, 3), padding=1, name='conv2')(y)
    if x.shape != y.shape:
      x = self.conv(self.filters, (1, 1), self.strides, name='proj_conv')(pre)
    return x + y


class PreActBottleneckBlock(nn.Module):
  """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (4x expansion) plus shortcut. The stride sits
  on the first 1x1 convolution, as in the reference pre-activation code (KaimingHe/resnet-1k-layers,
  resnet-pre-act.lua: `Convolution(nInputPlane,nBottleneckPlane,1,1,stride,stride,0,0)`)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array] = nn.relu
  strides: Tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pre = self.act(self.norm(name='bn1')(x))
    y = self.conv(self.filters, (1, 1), self.strides, name='conv1')(pre)
    y = self.act(self.norm(name='bn2')(y))
    y = self.conv(self.filters, (3, 3), padding=1, name='conv2')(y)
    y = self.act(self.norm(name='bn3')(y))
    y = self.conv(self.filters * 4, (1, 1), name='conv3')(y)
    if x.shape != y.shape:
      x = self.conv(self.filters * 4, (1, 1), self.strides, name='proj_conv')(pre)
    return x + y


class _CifarNet(nn.Module):
  """Shared shell: 3x3 stem, three stages, GAP and a dense head. Subclasses define the stages."""
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_group_size: int = 0  # Examples per BatchNorm statistics group in training (layers.norm_def).

  stem_filters = 16
  preact = True

  def stage_specs(self) -> List[stages.StageSpec]:
    raise NotImplementedError

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    conv = layers.conv_def(self.dtype)
    norm = layers.norm_def(train, self.dtype, self.bn_group_size)
    x = conv(self.stem_filters, (3, 3), padding=1, name='conv_init')(x.astype(self.dtype))
    if not self.preact:
      x = nn.relu(norm(name='bn_init')(x))
    features = {'stem': x}
    x = stages.run_stages(x, self.stage_specs(), conv=conv, norm=norm, features=features)
    if self.preact:  # Pre-activation networks normalise once more before pooling.
      x = nn.relu(norm(name='bn_final')(x))
    logits = layers.backbone_head(None, x, features, num_classes=self.num_classes,
                                  dtype=self.dtype, train=train)
    return logits, features


class PreActResNet(_CifarNet):
  """Pre-activation ResNet / Wide ResNet for 32x32 inputs.

  Attributes:
    stage_sizes: blocks per stage.
    block_cls: PreActBasicBlock or PreActBottleneckBlock.
    widths: `filters` of the blocks of each stage (a bottleneck outputs 4x this).
  """
  stage_sizes: Sequence[int] = (3, 3, 3)
  block_cls: ModuleDef = PreActBasicBlock
  widths: Sequence[int] = (16, 32, 64)

  def stage_specs(self) -> List[stages.StageSpec]:
    expansion = 4 if self.block_cls is PreActBottleneckBlock else 1
    return [
        stages.StageSpec(name=f'stage{i + 1}', num_blocks=n, channels=w * expansion,
                         stride=1 if i == 0 else 2, block=functools.partial(self.block_cls, filters=w),
                         preact=True)
        for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths))]


class PostActResNet(_CifarNet):
  """Post-activation CIFAR ResNet with ImageNet-style basic blocks (`resnet.BasicBlock`).

  Attributes:
    stage_sizes: blocks per stage ((3, 3, 3) gives ResNet-20).
    widths: channels of the stages.
  """
  stage_sizes: Sequence[int] = (3, 3, 3)
  widths: Sequence[int] = (16, 32, 64)

  preact = False

  def stage_specs(self) -> List[stages.StageSpec]:
    return [stages.StageSpec(name=f'stage{i + 1}', num_blocks=n, channels=w,
                             stride=1 if i == 0 else 2,
                             block=functools.partial(resnet.BasicBlock, filters=w))
            for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths))]


class ResNeXt(_CifarNet):
  """ResNeXt-29 for CIFAR: 64-channel stem, grouped post-activation bottlenecks.

  Attributes:
    cardinality: groups of the 3x3 convs (8 or 16).
    base_width: channels per group in the first stage (64 for "64d"); doubles per stage.
    stage_sizes: blocks per stage ((3, 3, 3) gives 29 layers).
  """
  cardinality: int = 8
  base_width: int = 64
  stage_sizes: Sequence[int] = (3, 3, 3)

  stem_filters = 64
  preact = False

  def stage_specs(self) -> List[stages.StageSpec]:
    specs = []
    for i, n in enumerate(self.stage_sizes):
      filters = 64 * 2**i
      block = functools.partial(resnet.BottleneckBlock, filters=filters, groups=self.cardinality,
                                width=self.cardinality * self.base_width * 2**i)
      specs.append(stages.StageSpec(name=f'stage{i + 1}', num_blocks=n, channels=filters * 4,
                                    stride=1 if i == 0 else 2, block=block))
    return specs


def _preact_resnet(depth: int, bottleneck: bool) -> Any:
  per_stage = (depth - 2) // (9 if bottleneck else 6)
  block = PreActBottleneckBlock if bottleneck else PreActBasicBlock
  return functools.partial(PreActResNet, stage_sizes=(per_stage,) * 3, block_cls=block)


def _wide_resnet(depth: int, k: int) -> Any:
  return functools.partial(PreActResNet, stage_sizes=((depth - 4) // 6,) * 3,
                           block_cls=PreActBasicBlock, widths=(16 * k, 32 * k, 64 * k))


ResNet20 = functools.partial(PostActResNet, stage_sizes=(3, 3, 3))
PreActResNet20 = _preact_resnet(20, bottleneck=False)
PreActResNet110 = _preact_resnet(110, bottleneck=False)
PreActResNet164 = _preact_resnet(164, bottleneck=True)
WRN22_10 = _wide_resnet(22, 10)
WRN28_10 = _wide_resnet(28, 10)
ResNeXt29_8x64d = functools.partial(ResNeXt, cardinality=8, base_width=64)
ResNeXt29_16x64d = functools.partial(ResNeXt, cardinality=16, base_width=64)
