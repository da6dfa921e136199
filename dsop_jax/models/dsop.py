"""The DSoP-Net training model: a first-order backbone plus detachable second-order branches.

`DSoPNet` calls its backbone (a submodule named 'backbone', so its variables form a subtree with
exactly the plain network's structure) and plugs every auxiliary branch into the backbone feature
it names; each branch is a top-level submodule carrying the paper's name ('a_pds2', ...). Detaching
(`detach` below) is therefore dropping the branch keys and keeping the 'backbone' subtree,
and the main head's computation is the plain network's, operation for operation (Section III-A.3).
"""

from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsop_jax.models import branches as branches_lib
from dsop_jax.models import stages

BACKBONE = 'backbone'


class DSoPNet(nn.Module):
  """Backbone + auxiliary branches.

  Attributes:
    backbone: an unbound backbone module returning `(logits, features)` with `stage_specs()`.
    branches: the branches to plug in, in order from the input to the output (Fig. 1).
    num_classes: outputs of every branch classifier (the same task as the main head).
    dtype: compute dtype of the branches' convolutions and classifiers.
    bn_group_size: examples per BatchNorm statistics group of the branches in training (the
      backbone carries its own, the same in `registry.create`).
  """
  backbone: nn.Module
  branches: Sequence[branches_lib.BranchSpec] = ()
  num_classes: int = 1000
  dtype: Any = jnp.float32
  bn_group_size: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> Mapping[str, Any]:
    """Returns {'logits': main first-order logits, 'aux_logits': {branch name: logits}}."""
    logits, features = self.backbone(x, train=train)
    specs = stages.branch_block_specs(self.backbone)
    aux_logits: Dict[str, jax.Array] = {}
    for spec in self.branches:
      branch = branches_lib.AuxBranch(spec, specs[spec.stage], self.num_classes, self.dtype,
                                      self.bn_group_size,
                                      name=spec.name)
      aux_logits.update(branch(features[spec.attach], train))
    return {'logits': logits, 'aux_logits': aux_logits}


def detach(variables: Mapping[str, Any], branch_names: Optional[Iterable[str]] = None
           ) -> dict:
  """Drops every branch subtree and returns the plain backbone's variables.

  Args:
    variables: DSoP-Net variables, e.g. {'params': {'backbone': ..., 'a_pds2': ...},
      'batch_stats': {...}}.
    branch_names: if given, the exact set of branch keys expected besides 'backbone' in each
      collection (e.g. from `registry.branch_specs`); a mismatch raises instead of silently dropping.

  Returns:
    {collection: backbone subtree} for every collection.

  Raises:
    ValueError: a collection has no 'backbone' subtree, or holds keys other than the expected ones.
  """
  expected = None if branch_names is None else set(branch_names)
  detached = {}
  for collection, tree in variables.items():
    if BACKBONE not in tree:
      raise ValueError(f"variables[{collection!r}] has no {BACKBONE!r} subtree (keys: "
                       f"{sorted(tree)}); these are not DSoP-Net training variables.")
    others = set(tree) - {BACKBONE}
    if expected is not None and not others <= expected:
      raise ValueError(f'variables[{collection!r}] holds keys {sorted(others - expected)} that are '
                       f'not branches of this model (expected branches: {sorted(expected)}).')
    detached[collection] = tree[BACKBONE]
  return detached
