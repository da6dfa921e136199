"""The export's files: what an export directory holds, and loading its plain network.

An export (written by `dsop_jax.training.export` from a training run) is a directory with
'variables/' (an Orbax checkpoint of the plain first-order network's {'params', 'batch_stats'}),
'model_config.json' (the config.model it is built from), 'preprocessing.json' (how images are
prepared), 'model_card.json', and optionally 'model.stablehlo', 'model.onnx', 'model.safetensors' and
'torch.json'. Reading one needs the model library and Orbax only: no TensorFlow, no training stack.
"""

import json
import logging as std_logging
from typing import Any, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp

from dsop_jax import config_files
from dsop_jax import paths
from dsop_jax.models import registry

FORMATS = ('orbax', 'stablehlo', 'onnx', 'torchvision')
STABLEHLO_FILE = 'model.stablehlo'
ONNX_FILE = 'model.onnx'
TORCH_FILE = 'model.safetensors'
TORCH_SETUP_FILE = 'torch.json'


def _not_orbax_info(record: std_logging.LogRecord) -> bool:
  # `record.levelno` is a Python level (INFO = 20); absl's constants are its own (WARNING = -1).
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def quiet_orbax_info_logs() -> None:
  """Orbax logs every file it writes at INFO; keep its warnings and errors only (idempotent)."""
  handler = logging.get_absl_handler()
  if _not_orbax_info not in handler.filters:
    handler.addFilter(_not_orbax_info)


def check_same_structure(reference: Any, candidate: Any, what: str = 'variables') -> None:
  """Raises ValueError naming the differing paths when two variable trees differ in structure or
  leaf shapes (e.g. detached variables vs a freshly initialised plain network)."""
  ref = {jax.tree_util.keystr(p): getattr(x, 'shape', None)
         for p, x in jax.tree.leaves_with_path(reference)}
  got = {jax.tree_util.keystr(p): getattr(x, 'shape', None)
         for p, x in jax.tree.leaves_with_path(candidate)}
  missing, unknown = sorted(set(ref) - set(got)), sorted(set(got) - set(ref))
  shapes = sorted(k for k in set(ref) & set(got) if ref[k] != got[k])
  if missing or unknown or shapes:
    raise ValueError(f'{what} do not match the expected structure: missing {missing[:10]}, '
                     f'unexpected {unknown[:10]}, shape mismatch '
                     f'{[(k, ref[k], got[k]) for k in shapes[:10]]}.')


# Every name an export writes; a directory holding anything else is not (only) an export.
EXPORT_ENTRIES = frozenset({'variables', 'model_config.json', 'preprocessing.json',
                            'model_card.json', STABLEHLO_FILE, ONNX_FILE, TORCH_FILE,
                            TORCH_SETUP_FILE})


def load(output_dir: paths.PathLike) -> Tuple[Any, dict]:
  """(plain first-order module, its variables) from an export directory, ready for
  `module.apply(variables, images, train=False)[0]`."""
  config_path = paths.path(output_dir) / 'model_config.json'
  if not config_path.exists():
    raise ValueError(f'{output_dir!r} is not a dsop_jax export (no model_config.json).')
  model_config = config_files.upgrade(json.loads(config_path.read_text()), str(config_path),
                                      section='model')
  registry.validate_model_config(model_config)
  module = registry.create_backbone(model_config)
  size = 32
  abstract = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, size, size, 3), jax.numpy.float32))
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(paths.path(output_dir) / 'variables', abstract)
  return module, variables


def read_json(output_dir: paths.PathLike, name: str) -> Optional[Any]:
  """A JSON file of an export (`name`: model_config.json, preprocessing.json, model_card.json) or
  of a workdir (class_names.json), or None when it has none."""
  path = paths.path(output_dir) / name
  return json.loads(path.read_text()) if path.exists() else None
