"""Detaching the auxiliary branches: from DSoP-Net training variables to the plain network's.

After training, "all auxiliary branches are removed and only the backbone first-order network is
preserved for inference" (Section III-A). Because `dsop.DSoPNet` keeps the backbone's variables in
one 'backbone' subtree and every branch in its own top-level subtree, detaching drops the branch keys
and returns the backbone subtree of every collection, which `models.create_backbone(config)` accepts
unchanged. Nothing is recomputed or re-initialised, so the detached network is bit-identical.
"""

from typing import Any, Iterable, Mapping, Optional

import jax

from dsop_jax import dsop


def detach(variables: Mapping[str, Any], branch_names: Optional[Iterable[str]] = None
           ) -> dict:
  """Drops every branch subtree and returns the plain backbone's variables.

  Args:
    variables: DSoP-Net variables, e.g. {'params': {'backbone': ..., 'a_pds2': ...},
      'batch_stats': {...}}.
    branch_names: if given, the exact set of branch keys expected besides 'backbone' in each
      collection (e.g. from `models.branch_specs`); a mismatch raises instead of silently dropping.

  Returns:
    {collection: backbone subtree} for every collection.

  Raises:
    ValueError: a collection has no 'backbone' subtree, or holds keys other than the expected ones.
  """
  expected = None if branch_names is None else set(branch_names)
  detached = {}
  for collection, tree in variables.items():
    if dsop.BACKBONE not in tree:
      raise ValueError(f"variables[{collection!r}] has no {dsop.BACKBONE!r} subtree (keys: "
                       f"{sorted(tree)}); these are not DSoP-Net training variables.")
    others = set(tree) - {dsop.BACKBONE}
    if expected is not None and not others <= expected:
      raise ValueError(f'variables[{collection!r}] holds keys {sorted(others - expected)} that are '
                       f'not branches of this model (expected branches: {sorted(expected)}).')
    detached[collection] = tree[dsop.BACKBONE]
  return detached


def check_same_structure(reference: Any, candidate: Any, what: str = 'variables') -> None:
  """Raises ValueError naming the differing paths when two variable trees differ in structure or
  leaf shapes (e.g. detached variables vs a freshly initialised plain network)."""
  ref = {jax.tree_util.keystr(p): getattr(x, 'shape', None)
         for p, x in jax.tree_util.tree_leaves_with_path(reference)}
  got = {jax.tree_util.keystr(p): getattr(x, 'shape', None)
         for p, x in jax.tree_util.tree_leaves_with_path(candidate)}
  missing, unknown = sorted(set(ref) - set(got)), sorted(set(got) - set(ref))
  shapes = sorted(k for k in set(ref) & set(got) if ref[k] != got[k])
  if missing or unknown or shapes:
    raise ValueError(f'{what} do not match the expected structure: missing {missing[:10]}, '
                     f'unexpected {unknown[:10]}, shape mismatch '
                     f'{[(k, ref[k], got[k]) for k in shapes[:10]]}.')
