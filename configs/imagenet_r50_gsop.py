"""The second-order network: ResNet-50-s1 with global covariance pooling at the end, kept at test time.

No DSoP branches: GAP + FC is replaced by a dimensionality reduction of stage 5's 2048 channels,
covariance pooling (iSQRT-COV, or MPN-COV with `:mpn_cov`) and an FC (dsop_jax/models/gsop.py). Trained
with the paper's ImageNet schedule (Section V-B: 90 epochs, lr 0.1 /10 at 30 and 60, batch 256).

Paper, top-1 / top-5 error % (single 224 centre crop):
Table II (the paper quotes these two from [19], [21]; 56.9M parameters, 6.43 GFLOPs):
  iSQRT-COV, direct DR to 256:  22.14 / 6.22   --config=configs/imagenet_r50_gsop.py
  MPN-COV, direct DR to 256:    22.74 / 6.54   --config=configs/imagenet_r50_gsop.py:mpn_cov
Table XI (iSQRT-COV; reducing the 2048 channels):
  direct DR to 64 / 128 / 256:  23.73 / 6.99, 22.78 / 6.43, 22.14 / 6.22    :dr=64 (dr=128, dr=256)
  PSDR, delta 0.25, to 64:      23.30 / 6.86   :psdr=64
  PSDR, delta 0.25, to 128:     22.18 / 6.09   :psdr=128
  PSDR, delta 0.5, to 64 / 128 / 256, no aux. branches:
                                23.24 / 6.72, 22.02 / 6.15, 21.84 / 5.99    :psdr=64,delta=0.5 (...)
  PSDR, delta 0.5, to 64 / 128 / 256, with aux. branches:
                                22.71 / 6.42, 21.89 / 6.11, 21.65 / 6.00    :psdr=64,delta=0.5,psdr_aux

"w/ Aux. Branches" is read as PSDR's own supervised side branches (Section III-B: one after each
intermediate layer, reducing directly to the target, pooled and classified; weighted like the main
head, alpha). They are training-only and detached like DSoP branches; the exported network is
backbone + PSDR chain + pooling + FC.

Complexity (`python -m dsop_jax.complexity --config=configs/imagenet_r50_gsop.py`): 56,929,832
parameters, as Table II's 56.9M. The MAC count is 6.56 GFLOPs, of which Newton-Schulz's 12 matrix
products of 256x256 are 0.20; without them 6.36, and the paper's extra 0.16 GFLOPs over ResNet-50-s1
matches the reduction + covariance + FC (0.15) rather than the iterations.
"""

import ml_collections

from dsop_jax import config_files

imagenet_r50 = config_files.sibling(__file__, 'imagenet_r50')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """Options are imagenet_base's: mpn_cov, dr=N, psdr=N, delta=D, psdr_aux (and s2, ...)."""
  return imagenet_r50.get_config(','.join(filter(None, ('plain', 'isqrt_cov', variant))))
