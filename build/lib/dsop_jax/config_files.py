"""Config files found by path: a config's shared base is imported from the config's own folder.

`python -m dsop_jax.main --config=PATH/configs/imagenet_r50.py` loads that file by path
(ml_collections' config flags). The file's base (`imagenet_base.py` beside it) must then be found
without the repository root on `sys.path`, so configs import their bases with `sibling(__file__,
'imagenet_base')` rather than `from configs import imagenet_base`.
"""

import importlib.util
import os
import sys
import types


def sibling(file: str, name: str) -> types.ModuleType:
  """The config module NAME from the folder of FILE (a config's `__file__`), imported once.

  It is registered as `configs.NAME`, the name it has when the repository root is on `sys.path`,
  so `from configs import NAME` (tests, notebooks) and this function give the same module.

  Raises:
    FileNotFoundError: the folder of FILE has no NAME.py.
  """
  module_name = f'configs.{name}'
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
