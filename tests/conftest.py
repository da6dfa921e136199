"""Shared tiny models and configs for the tests, a persistent XLA compilation cache, and the order
in which the long tests start.

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
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])

# The tests that took 40 s or more in a `--durations` run of the suite on a 2-core x86 CPU, longest
# first. They start before every other test: with pytest-xdist's `--dist load`, which hands out
# tests in this order to whichever worker is free, a long test then never starts last and leaves the
# other worker idle. A test missing here only loses its place.
LONG_TESTS = (
    'soak_test.py::test_soak_steady_memory_files_and_step_time',
    'train_test.py::test_two_processes_with_jax_distributed_equal_one_process',
    'train_test.py::test_sigterm_and_sigkill_then_rerun_match_an_uninterrupted_run',
    'train_test.py::test_data_parallel_8_devices_matches_1_device',
    'benchmark_test.py::test_quick_cli_json_without_tensorflow',
    'notebooks_test.py::test_mock_mode_runs_every_cell[imagenet_eval',
    'notebooks_test.py::test_dsop_anatomy_tables_detach_and_covariance',
    'notebooks_test.py::test_quickstart_trains_plots_exports_and_classifies',
    'train_test.py::test_mocked_tfds_train_and_evaluate[imagenet2012:isqrt_cov',
    'notebooks_test.py::test_mock_mode_runs_every_cell[reproduce_cifar',
    'train_test.py::test_digits_train_evaluate_resume_and_export',
    'train_test.py::test_mocked_tfds_train_and_evaluate[cifar10,plain,adahessian]',
    'train_test.py::test_mocked_tfds_train_and_evaluate[imagenet2012:gap]',
    'configs_test.py::test_deep_config_trains_on_one_block_per_stage_and_branch[imagenet_r50-]',
    'train_test.py::test_bfloat16_mixed_precision_trains_with_float32_parameters',
)


def pytest_collection_modifyitems(items):
  """The LONG_TESTS first, in their order; every other test after them, as collected."""
  def rank(item):
    return next((i for i, name in enumerate(LONG_TESTS) if name in item.nodeid), len(LONG_TESTS))
  items.sort(key=rank)


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
