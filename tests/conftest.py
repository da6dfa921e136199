"""Shared tiny models and configs for the tests, and a persistent XLA compilation cache.

Many tests train the same tiny configs, in this process, in the other pytest-xdist worker, and in
subprocesses (`dsop_jax.main` runs, notebooks). They share compiled programs through JAX's
persistent compilation cache in .pytest_cache/ of the checkout (a clean clone starts empty). The
cached executables are the ones XLA would compile, so results stay bit-identical; on a 2-core x86
CPU a repeated tiny training run took 17 s instead of 34 s.
"""

import functools
import os

import jax
import ml_collections

from dsop_jax import cifar_backbones
from dsop_jax import resnet

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.pytest_cache',
                      'jax_compilation_cache')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)  # Inherited by subprocesses.
# Every program, not only those that took over a second to compile (JAX's default): subprocesses
# and notebook kernels then load the small eval and init programs too.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])

# A 4-stage ImageNet-style ResNet with 4..32 channels and one basic block per stage.
TinyResNet = functools.partial(resnet.ResNet, stage_sizes=(1, 1, 1, 1), block_cls=resnet.BasicBlock,
                               num_filters=4, num_classes=5)
# A 3-stage pre-activation CIFAR ResNet with 3 blocks per stage and 4/8/8 channels.
TinyPreAct = functools.partial(cifar_backbones.PreActResNet, stage_sizes=(3, 3, 3),
                               widths=(4, 8, 8), num_classes=5)


def branches_config(**overrides) -> ml_collections.ConfigDict:
  """A `config.model.branches` dict for 4 stages; override any field."""
  cfg = ml_collections.ConfigDict(dict(
      blocks=(1, 1, 1, 1), pattern='', channels=(4, 4, 8, 8), pool='isqrt_cov',
      reduction=('direct',) * 4, psdr_delta=0.25, psdr_aux=True, num_iters=5, dropout=0.0))
  cfg.update(overrides)
  return cfg
