"""Backbone weights from outside the run: fine-tuning from pretrained weights
(`config.model.init_from`) and the trained backbone of two-phase training (Table III,
`config.train.backbone_checkpoint`, or `init_from` when that is empty).

A source is a safetensors file of a torchvision or timm state dict (`torch_weights`: torchvision's
ResNet-18/34/50/101/152, timm's `seresnext101_32x4d` and `efficientnet_b0`), or a dsop_jax export
directory or training workdir (its latest checkpoint, branches detached). It fills the backbone's
variables; the auxiliary branches always start fresh, and so does the classifier when the source's
has another number of classes (a fine-tuning dataset), other classes (where both sides name them)
or the network has a second-order head. Weights holding NaN or infinity are refused, naming them.
-s1 networks take -s2 weights: the stride changes no parameter. Nothing is ever unpickled: a
PyTorch `.pth` is refused with the line that converts it.
"""

from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from dsop_jax import paths
from dsop_jax.data import datasets
from dsop_jax.deploy import artifact
from dsop_jax.deploy import torch_weights
from dsop_jax.training import export
from dsop_jax.training import runs

HEADS = ('head', 'gsop')  # The backbone's own head: the classifier, or the second-order head.


def source_of(config: ml_collections.ConfigDict) -> Tuple[str, str]:
  """(field, path) of the weights a new run starts its backbone from; ('', '') for none."""
  if config.train.policy == 'two_phase' and config.train.backbone_checkpoint:
    return 'train.backbone_checkpoint', config.train.backbone_checkpoint
  if config.model.init_from:
    return 'model.init_from', config.model.init_from
  return '', ''


def validate(config: ml_collections.ConfigDict) -> Optional[Dict[str, np.ndarray]]:
  """Raises ValueError naming the field when the weights to start from cannot be used: no such
  file or directory, a file that is not safetensors, a network with no torchvision/timm
  counterpart for a state dict, keys or shapes that do not fit it, non-finite values. Runs before
  anything compiles, on one read of the file.

  Returns:
    The state dict it read (give it to `load`, so that a new run reads the file once), or None
    when the run starts from an export or workdir, or from nothing.
  """
  init_from = config.model.init_from
  if not isinstance(init_from, str):
    raise ValueError(f'config.model.init_from = {init_from!r} is invalid: give a path (a '
                     'safetensors file, a dsop_jax export or workdir) or \'\' for none.')
  field, path = source_of(config)
  if not path:
    return None
  source = paths.path(path, f'config.{field}')
  if source.is_dir():
    if not ((source / 'model_config.json').exists() or (source / 'config.json').exists()):
      raise ValueError(f'config.{field} = {path!r} is invalid: the directory is neither a dsop_jax '
                       'export (model_config.json) nor a training workdir (config.json).')
    return None
  if not source.is_file():
    raise ValueError(f'config.{field} = {path!r} is invalid: no such file or directory.')
  torch_weights.check_supported(torch_weights.first_order(config.model), f'config.{field}')
  state, _ = torch_weights.read_safetensors(path)  # One read (a gs:// file: one download).
  torch_weights.check_state_dict(config.model, {k: list(v.shape) for k, v in state.items()},
                                 source=f'config.{field} = {path!r}')
  check_finite(state, f'config.{field} = {path!r}')
  return state


def check_finite(tensors: Mapping[str, Any], source: str) -> None:
  """Raises ValueError naming `source` and the first tensors that hold NaN or infinity (weights
  that would turn the first step's loss into NaN)."""
  bad = [k for k, v in tensors.items()  # Floats of every width, bfloat16 (kind 'V') included.
         if np.asarray(v).dtype.kind not in 'biu'
         and not np.all(np.isfinite(np.asarray(v, np.float64)))]
  if bad:
    raise ValueError(f'{source} is invalid: {", ".join(repr(k) for k in bad[:5])} '
                     f'{"holds" if len(bad) == 1 else "hold"} non-finite values (NaN or '
                     'infinity); these weights cannot be trained from.')


def load(config: ml_collections.ConfigDict, fresh: Mapping[str, Any],
         state_dict: Optional[Mapping[str, np.ndarray]] = None
         ) -> Tuple[Dict[str, Any], List[str]]:
  """The backbone's {'params', 'batch_stats'} from the run's source (`source_of`), with `fresh`
  (the backbone's freshly initialised variables) where the source has nothing to give.
  `state_dict`: the source's state dict as `validate` read it (read again when not given).

  Returns:
    (variables, the names of the fresh parts kept).

  Raises:
    ValueError: the source's variables do not fit the network, naming the keys.
  """
  field, path = source_of(config)
  fresh = jax.device_get(dict(fresh))
  if paths.path(path).is_file():
    state = state_dict if state_dict is not None else torch_weights.read_safetensors(path)[0]
    variables, kept = torch_weights.from_state_dict(config.model, state, fresh,
                                                    source=f'config.{field} = {path!r}')
  else:
    _, source = export.load_first_order(path)
    check_finite({jax.tree_util.keystr(k): v for k, v in jax.tree.leaves_with_path(source)},
                 f'config.{field} = {path!r}')
    variables, kept = _fit_head(source, fresh)
    artifact.check_same_structure(fresh, variables, f'backbone variables in {path}')
    if 'head' in fresh['params'] and not any(k.startswith('the classifier') for k in kept):
      variables, kept = _check_classes(config, path, fresh, variables, kept)
  logging.info('Backbone initialised from %s%s.', path,
               f'; fresh: {", ".join(kept)}' if kept else '')
  return variables, kept


def source_class_names(path: str) -> Optional[List[str]]:
  """The class names a dsop_jax export (preprocessing.json) or workdir (class_names.json) was
  trained on, when it recorded them."""
  names = (artifact.read_json(path, 'preprocessing.json') or {}).get('class_names') or (
      artifact.read_json(path, runs.CLASS_NAMES_FILE))
  return list(names) if names else None


def _check_classes(config: ml_collections.ConfigDict, path: str, fresh: Mapping[str, Any],
                   variables: Dict[str, Any], kept: List[str]) -> Tuple[Dict[str, Any], List[str]]:
  """Keeps the source's classifier only for the same classes in the same order: where both sides
  name their classes and the names differ, the classifier starts fresh (logged, naming them)."""
  theirs, ours = source_class_names(path), datasets.class_names(config)
  rows = fresh['params']['head']['kernel'].shape[-1]
  if theirs is not None and ours is not None and theirs != list(ours):
    differ = [(i, t, o) for i, (t, o) in enumerate(zip(theirs, ours)) if t != o]
    logging.warning('The classifier of %s was trained on other classes (label %s): it starts '
                    'fresh instead of being kept.', path,
                    '; '.join(f'{i}: {t!r} there, {o!r} here' for i, t, o in differ[:5]))
    variables = {c: dict(tree) for c, tree in variables.items()}
    variables['params']['head'] = fresh['params']['head']
    return variables, kept + [f'the classifier ({rows} classes)']
  logging.info('Kept the classifier of %s: its %d rows are labels 0-%d%s.', path, rows, rows - 1,
               ', the same classes in the same order' if theirs is not None and ours is not None
               else ' (the class names of one side are unknown: the order is assumed to match)')
  return variables, kept


def _fit_head(source: Mapping[str, Any], fresh: Mapping[str, Any]
              ) -> Tuple[Dict[str, Any], List[str]]:
  """`source` with the network's fresh head where the source's head has other variables (another
  class count, or a first-order head for a second-order network)."""
  shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)  # noqa: E731
  out = {collection: dict(tree) for collection, tree in source.items()}
  kept = []
  for collection, tree in fresh.items():
    ours = {k: v for k, v in tree.items() if k in HEADS}
    theirs = {k: v for k, v in source.get(collection, {}).items() if k in HEADS}
    if shapes(ours) != shapes(theirs):
      for k in theirs:
        out[collection].pop(k)
      out[collection].update(ours)
      kept += [k for k in ours if k not in kept]
  classes = fresh['params']['head']['kernel'].shape[-1] if 'head' in fresh['params'] else 0
  return out, [f'the classifier ({classes} classes)' if k == 'head' else
               'the second-order head (gsop)' for k in kept]
