"""The second-order network: global covariance pooling at the end of a ResNet, kept at test time.

MPN-COV (Li et al. 2017) and iSQRT-COV (Li et al. 2018) replace a ResNet's GAP + FC by a
dimensionality reduction of the last stage's 2048 channels, covariance pooling and an FC on the
C(C+1)/2-dimensional representation (Table II: ResNet-50-s1, 256 channels, 56.9M parameters, 6.43
GFLOPs). DSoP-Net compares two reductions in front of it (Table XI):
- direct DR: one 1x1 conv + BN + ReLU to the target channels ([19], [21]);
- PSDR (Section III-B, Eq. 4): a chain of 1x1 conv + BN + ReLU layers (2048 -> 1024 -> ... ->
  target), where "w/ Aux. Branches" gives every intermediate layer but the last a supervised side
  branch (direct DR to the target, the same pooling, an FC) during training.

`GSoPHead` is the head a `resnet.ResNet` (or `efficientnet.EfficientNet`, after its 1280-channel
head conv) uses in place of GAP + FC (variables under 'gsop'); it records each intermediate PSDR output as the feature 'gsop_psdr<i>'. The side branches are ordinary
`branches.AuxBranch`es with no S_a blocks plugged into those features (`side_specs`), so they live
outside the backbone and detaching them (`dsop.detach`) leaves the deployed second-order network:
backbone + reduction + pooling + FC.

The head is described by a `branches.BranchSpec` (name 'gsop', no blocks): the same fields decide
the reduction chain of an auxiliary branch and of this head.
"""

from typing import Any, Dict, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsop_jax.models import branches as branches_lib
from dsop_jax.models import covpool
from dsop_jax.models import layers

NAME = 'gsop'
POOLS = ('isqrt_cov', 'mpn_cov')


def feature_name(index: int) -> str:
  """Backbone feature of the head's intermediate PSDR layer `index` (1-based): 'gsop_psdr1'."""
  return f'{NAME}_psdr{index}'


def side_specs(head: branches_lib.BranchSpec, in_channels: int) -> List[branches_lib.BranchSpec]:
  """The supervised side branches of a PSDR head (none for direct DR or without psdr_aux).

  One after every intermediate layer except the last (whose output the head itself pools), each
  reducing straight to the head's target channels before pooling (Section IV-B).
  """
  if head.reduction != 'psdr' or not head.psdr_aux:
    return []
  chain = branches_lib.reduction_channels(head, in_channels)
  return [branches_lib.BranchSpec(
      name=feature_name(i + 1), stage=head.stage, stage_index=head.stage_index,
      attach=feature_name(i + 1), num_blocks=0, pool=head.pool, pool_channels=head.pool_channels,
      reduction='direct', num_iters=head.num_iters, dropout=head.dropout,
      activation=head.activation, weight='alpha')
          for i in range(len(chain) - 1)]


class GSoPHead(nn.Module):
  """Reduction (direct DR or PSDR), covariance pooling, optional dropout and the classifier.

  Attributes:
    spec: pooling ('isqrt_cov' or 'mpn_cov'), target channels, reduction, delta, iterations and
      dropout (the name, stage and attach fields say where it sits: the last stage).
    num_classes: classifier outputs.
    dtype: compute dtype of the convolutions and the classifier (pooling is float32).
    bn_group_size: examples per BatchNorm statistics group in training (`layers.norm_def`).
  """
  spec: branches_lib.BranchSpec
  num_classes: int = 1000
  dtype: Any = jnp.float32
  bn_group_size: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Returns (float32 logits, {'gsop_psdr<i>': intermediate PSDR outputs, 'pre_logits': the
    pooled representation})."""
    spec = self.spec
    conv = layers.conv_def(self.dtype)
    norm = layers.norm_def(train, self.dtype, self.bn_group_size)
    chain = branches_lib.reduction_channels(spec, x.shape[-1])
    act = layers.ACTIVATIONS[spec.activation]
    features = {}
    if spec.reduction == 'psdr':
      x = branches_lib.psdr(x, chain, conv, norm, act,
                            lambda i, y: features.__setitem__(feature_name(i + 1), y))
    elif chain:
      x = layers.ConvNormAct(chain[-1], conv, norm, act, name='dr')(x)
    x = covpool.get_pool(spec.pool, spec.num_iters)(x)
    features['pre_logits'] = x
    return layers.classifier(x, self.num_classes, dtype=self.dtype, train=train, name='fc',
                             dropout=spec.dropout), features
