"""EfficientNet-b0 (Tan & Le 2019) that returns its intermediate features (Section V-C backbone).

Architecturally the reference network as the paper ran it (the `efficientnet_b0` of
rwightman/pytorch-image-models, footnote 4): a 3x3 stride-2 stem of 32 channels, seven stages of
MBConv blocks (inverted residuals: 1x1 expansion, depthwise kxk carrying the stride,
squeeze-and-excitation on a quarter of the block's input channels, 1x1 projection, an identity
shortcut with stochastic depth where the shape allows), a 1x1 head conv to 1280 channels, GAP,
dropout 0.2 and the classifier; swish activations, PyTorch-style BN and symmetric padding.
5,288,548 parameters for 1000 classes.

Stages are named 'stage1' ... 'stage7' (features 'stage<s>' and 'stage<s>_block<j>', then
'head_conv' (the 1280-channel map) and 'pre_logits'), so DSoP branches plug in like on a ResNet:
stage 4 ends after block 8 of 16, the middle of the network (Section V-C). The branch of the last
stage reads the head conv's output, what the first-order pooling reads (`branch_end_stage`).
`head=` replaces GAP + dropout + FC by e.g. `gsop.GSoPHead` on 'head_conv' (the paper's
second-order EfficientNet-b0: 1280 -> 64 channels by 1x1 conv + BN + swish, iSQRT-COV, dropout 0.2).
"""

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsop_jax.models import layers
from dsop_jax.models import resnet
from dsop_jax.models import stages

ModuleDef = Any

# (expansion, kernel, stride, output channels, blocks) of EfficientNet-b0's seven stages.
# Initialisers of the reference implementations (TensorFlow's efficientnet_model.py; timm's
# `_init_weight_goog`), where they differ from `layers.conv_def`'s fan-out normal: a depthwise
# kernel's fan-out is k*k*channels / groups = k*k, its fan-in here (normal, std sqrt(2 / (k*k)));
# the squeeze-and-excitation layers are 1x1 convolutions of that rule (std sqrt(2 / outputs)); the
# classifier is uniform in +-1/sqrt(outputs). Biases start at zero.
DEPTHWISE_INIT = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
SE_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
CLASSIFIER_INIT = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_out', 'uniform')

B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
HEAD_FEATURE = 'head_conv'


class MBConvBlock(nn.Module):
  """Inverted residual block; expansion 1 skips the 1x1 expansion (timm's DepthwiseSeparableConv).

  Attributes:
    filters: output channels.
    conv, norm: layer factories (layers.conv_def / layers.norm_def).
    strides: stride of the depthwise convolution.
    expansion: inner width = expansion * input channels.
    kernel: depthwise kernel size.
    se_ratio: squeeze channels = int(input channels * se_ratio).
    drop_path: stochastic-depth rate of the residual branch (active in training only).
    deterministic: True disables stochastic depth (evaluation; and auxiliary-branch blocks).
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: Tuple[int, int] = (1, 1)
  expansion: int = 6
  kernel: int = 3
  se_ratio: float = 0.25
  drop_path: float = 0.0
  deterministic: bool = True
  act: Callable[[jax.Array], jax.Array] = nn.swish

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_channels = x.shape[-1]
    y = x
    if self.expansion != 1:
      y = self.conv(in_channels * self.expansion, (1, 1), name='expand_conv')(y)
      y = self.act(self.norm(name='expand_bn')(y))
    width = y.shape[-1]
    pad = self.kernel // 2
    y = self.conv(width, (self.kernel, self.kernel), self.strides, padding=[(pad, pad)] * 2,
                  feature_group_count=width, kernel_init=DEPTHWISE_INIT, name='dw_conv')(y)
    y = self.act(self.norm(name='dw_bn')(y))
    y = resnet.SqueezeExcitation(squeeze_channels=max(1, int(in_channels * self.se_ratio)),
                                 act=self.act, kernel_init=SE_INIT, name='se')(y)
    y = self.conv(self.filters, (1, 1), name='project_conv')(y)
    y = self.norm(name='project_bn')(y)
    if self.strides != (1, 1) or in_channels != self.filters:
      return y
    if self.drop_path and not self.deterministic:  # Per-image stochastic depth, rescaled.
      keep = 1.0 - self.drop_path
      mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (y.shape[0], 1, 1, 1))
      y = y * mask.astype(y.dtype) / keep
    return x + y


class HeadConvBlock(nn.Module):
  """The head's building block, 1x1 conv + BN + swish to `filters` channels, as a branch block (the
  S_a blocks of the branch that reads the head convolution's output)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: Tuple[int, int] = (1, 1)
  act: Callable[[jax.Array], jax.Array] = nn.swish

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self.act(self.norm(name='bn')(self.conv(self.filters, (1, 1), self.strides,
                                                   name='conv')(x)))


class EfficientNet(nn.Module):
  """EfficientNet with the stem, MBConv stages, head conv, GAP, dropout and a dense classifier.

  Attributes:
    stage_config: (expansion, kernel, stride, channels, blocks) per stage.
    num_classes: classifier outputs.
    stem_filters, head_filters: 32 and 1280 for b0.
    dropout: rate before the classifier (0.2 for b0).
    drop_path: stochastic-depth rate of the last block, linearly smaller before it (0.2).
    last_stride: stride of the last down-sampling stage (stage 6 in b0): 2 is the standard network.
    dtype: compute dtype of activations (parameters stay float32); logits are float32.
    head: None for GAP + dropout + a dense layer ('head'), else a module factory called with
      (num_classes=, dtype=, bn_group_size=, name='gsop') mapping the head conv's output to
      (logits, features).
    bn_group_size: examples per BatchNorm statistics group in training (`layers.norm_def`).
  """
  stage_config: Sequence[Tuple[int, int, int, int, int]] = B0_STAGES
  num_classes: int = 1000
  stem_filters: int = 32
  head_filters: int = 1280
  dropout: float = 0.2
  drop_path: float = 0.2
  last_stride: int = 2
  dtype: Any = jnp.float32
  head: Optional[ModuleDef] = None
  bn_group_size: int = 0

  def _strides(self) -> List[int]:
    strides = [s for _, _, s, _, _ in self.stage_config]
    last = max(i for i, s in enumerate(strides) if s == 2)
    strides[last] = self.last_stride
    return strides

  def stage_specs(self) -> List[stages.StageSpec]:
    """Stages 'stage1' ... 'stage7'; a branch block is the stage's MBConv with stride 1."""
    return [stages.StageSpec(
        name=f'stage{i + 1}', num_blocks=blocks, channels=channels, stride=stride,
        block=functools.partial(MBConvBlock, filters=channels, expansion=expansion, kernel=kernel))
            for i, ((expansion, kernel, _, channels, blocks), stride) in enumerate(
                zip(self.stage_config, self._strides()))]

  def head_input(self) -> Tuple[str, int]:
    """(feature name, channels) of what the head pools: the 1280-channel head conv output."""
    return HEAD_FEATURE, self.head_filters

  def branch_end_stage(self) -> stages.StageSpec:
    """Where the last stage's branch reads: "we always insert the last auxiliary branch B^N right
    before the first-order pooling layer" (Section III-A), which pools the head convolution's
    output, not stage 7's; its S_a blocks are the head's own 1x1 conv + BN + swish."""
    return stages.StageSpec(name=HEAD_FEATURE, num_blocks=1, channels=self.head_filters, stride=1,
                            block=functools.partial(HeadConvBlock, filters=self.head_filters))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    conv = layers.conv_def(self.dtype)
    norm = layers.norm_def(train, self.dtype, self.bn_group_size)
    x = x.astype(self.dtype)
    x = conv(self.stem_filters, (3, 3), (2, 2), padding=[(1, 1), (1, 1)], name='stem_conv')(x)
    x = nn.swish(norm(name='stem_bn')(x))
    features = {'stem': x}
    x = stages.run_stages(  # Stochastic depth grows linearly to `drop_path` at the last block.
        x, self.stage_specs(), conv=conv, norm=norm, features=features,
        block_kwargs=lambda index, total: dict(drop_path=self.drop_path * index / total,
                                               deterministic=not train))
    x = conv(self.head_filters, (1, 1), name='head_conv')(x)
    x = nn.swish(norm(name='head_bn')(x))
    features[HEAD_FEATURE] = x
    logits = layers.backbone_head(self.head, x, features, num_classes=self.num_classes,
                                  dtype=self.dtype, train=train, bn_group_size=self.bn_group_size,
                                  dropout=self.dropout, kernel_init=CLASSIFIER_INIT)
    return logits, features


EfficientNetB0 = functools.partial(EfficientNet, stage_config=B0_STAGES)
