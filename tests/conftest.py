"""Shared tiny models and configs for the tests, and a persistent XLA compilation cache.

Many tests train the same tiny configs, in this process, in the other pytest-xdist worker, and in
subprocesses (`dsop_jax.main` runs, notebooks). They share compiled programs through JAX's
persistent compilation cache in .pytest_cache/ of the checkout (a clean clone starts empty). The
cached executables are the ones XLA would compile, so results stay bit-identical; on a 2-core x86
CPU a repeated tiny training run took 17 s instead of 34 s.
"""

import functools
import os

# The tests' programs run a few steps each, so XLA compiles them cheaply (set before jax starts
# its CPU backend, and inherited by subprocesses and notebook kernels, whose cached programs then
# match): LLVM's cheap passes only, the classic loop emitters instead of the new fusion emitters,
# one codegen thread. On a 2-core x86 CPU the tiny digits training step took 9.2 s of CPU time to
# compile with XLA's defaults, 5.7 s at optimisation level 0 with cheap passes, and 1.6-1.8 s with
# all four flags, running in 0.49, 0.82 and 0.6-0.85 s. Tests that compare runs compare runs
# compiled alike. `xla_flags` appends a test's own flags (device count) to these.
XLA_TEST_FLAGS = ('--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true '
                  '--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1')
XLA_USER_FLAGS = os.environ.get('XLA_FLAGS', '')  # For a subprocess that runs many steps (soak).
os.environ['XLA_FLAGS'] = ' '.join(f for f in (XLA_USER_FLAGS, XLA_TEST_FLAGS) if f)

import jax  # noqa: E402  (after XLA_FLAGS)
import ml_collections  # noqa: E402

from dsop_jax.models import cifar_backbones  # noqa: E402
from dsop_jax.models import resnet  # noqa: E402

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


def xla_flags(*flags: str) -> str:
  """XLA_FLAGS for a subprocess: the suite's (`XLA_TEST_FLAGS`) and `flags`."""
  return ' '.join((os.environ['XLA_FLAGS'], *flags))


def branches_config(**overrides) -> ml_collections.ConfigDict:
  """A `config.model.branches` dict for 4 stages; override any field."""
  cfg = ml_collections.ConfigDict(dict(
      blocks=(1, 1, 1, 1), pattern='', channels=(4, 4, 8, 8), pool='isqrt_cov',
      reduction=('direct',) * 4, psdr_delta=0.25, psdr_aux=True, num_iters=5, dropout=0.0))
  cfg.update(overrides)
  return cfg


# The longest tests (multi-process runs, the soak, notebooks), longest first, run before the rest:
# pytest-xdist's worksteal gives each worker a contiguous half of the collection and lets an idle
# worker take pending tests from the other, so the short tests fill the end instead of one long
# test running alone while the other worker waits.
LONGEST_FIRST = (
    'gpu_check_test.py::test_quick', 'train_test.py::test_preemption_', 'soak_test.py::',
    'benchmark_test.py::test_quick_cli', 'remote_workdir_test.py::', 'train_test.py::test_data_parallel_', 'notebooks_test.py::test_dsop_anatomy',
    'notebooks_test.py::test_mock_mode', 'notebooks_test.py::test_quickstart',
    'pretrained_test.py::test_the_cub_', 'pretrained_test.py::test_fine_tuning_',
    'optim_test.py::test_adahessian_trains')


def pytest_collection_modifyitems(items):
  rank = lambda item: next((i for i, prefix in enumerate(LONGEST_FIRST) if prefix in item.nodeid),
                           len(LONGEST_FIRST))
  items.sort(key=rank)  # Stable: the rest keep their order.
