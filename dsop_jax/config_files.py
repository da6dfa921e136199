"""Config files: a config's shared base imported from the config's own folder, and saved configs
brought up to the current schema (`upgrade`).

`python -m dsop_jax.main --config=PATH/configs/imagenet_r50.py` loads that file by path
(ml_collections' config flags). The file's base (`imagenet_base.py` beside it) must then be found
without the repository root on `sys.path`, so configs import their bases with `sibling(__file__,
'imagenet_base')` rather than `from dsop_jax.configs import imagenet_base`.
"""

import importlib.util
import os
import sys
import types
from typing import Any, Mapping

import ml_collections


def sibling(file: str, name: str) -> types.ModuleType:
  """The config module NAME from the folder of FILE (a config's `__file__`), imported once.

  It is registered as `configs.NAME`, the name it has when the repository root is on `sys.path`,
  so `from dsop_jax.configs import NAME` (tests, notebooks) and this function give the same module.

  Raises:
    FileNotFoundError: the folder of FILE has no NAME.py.
  """
  module_name = f'dsop_jax.configs.{name}'
  if module_name in sys.modules:
    return sys.modules[module_name]
  path = os.path.join(os.path.dirname(os.path.abspath(file)), f'{name}.py')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{file} imports the config {name!r}, but {path} does not exist.')
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[module_name]
    raise
  return module


def upgrade(saved: Mapping[str, Any], where: str, section: str = '') -> ml_collections.ConfigDict:
  """A config saved by any version of dsop_jax (a workdir's config.json; with `section='model'`,
  an export's model_config.json), brought up to the current schema in one step: every field of
  `configs/common.py`'s `get_config()` (or of its `section`), with the saved values over the
  defaults. A field the file lacks was added after it was written; its default is what such a run
  did (every field's default is the behaviour from before the field existed).

  Raises:
    ValueError: the file holds a field the schema does not have, or a value of another type,
      naming `where` and the field.
  """
  # Imported here, not at the top: every config file imports this module, and a config folder
  # loaded by path (`sibling`) must give its own common.py, not one imported ahead of it.
  from dsop_jax.configs import common  # pylint: disable=g-import-not-at-top
  schema = common.get_config()
  if section:
    schema = schema[section]
  _fill(schema, saved, f'config.{section}' if section else 'config', where)
  return schema


def _fill(target: ml_collections.ConfigDict, values: Mapping[str, Any], prefix: str,
          where: str) -> None:
  if not isinstance(values, Mapping):
    raise ValueError(f'{where}: {prefix} is {values!r}, not a section of fields.')
  for key, value in values.items():
    name = f'{prefix}.{key}'
    if key not in target:
      raise ValueError(f'{where}: {name} is not a field of dsop_jax configs (configs/common.py); '
                       'it was written by another program or edited by hand.')
    if isinstance(target[key], ml_collections.ConfigDict):
      _fill(target[key], value, name, where)
      continue
    try:
      target[key] = value
    except TypeError as e:
      raise ValueError(f'{where}: {name} = {value!r} is invalid: the field holds '
                       f'{type(target[key]).__name__} values.') from e
