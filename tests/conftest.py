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

# Tests over 40 s in `--durations` runs of the suite on a 2-core x86 CPU, with those seconds.
LONG_TESTS = {
    'train_test.py::test_two_processes_with_jax_distributed_equal_one_process': 150,
    'soak_test.py::test_soak_steady_memory_files_and_step_time': 125,
    'train_test.py::test_sigterm_and_sigkill_then_rerun_match_an_uninterrupted_run': 85,
    'train_test.py::test_mocked_tfds_train_and_evaluate[imagenet2012:isqrt_cov': 80,
    'notebooks_test.py::test_quickstart_trains_plots_exports_and_classifies': 65,
    'train_test.py::test_data_parallel_8_devices_matches_1_device': 60,
    'notebooks_test.py::test_dsop_anatomy_tables_detach_and_covariance': 55,
    'notebooks_test.py::test_mock_mode_runs_every_cell[reproduce_cifar': 55,
    'notebooks_test.py::test_mock_mode_runs_every_cell[imagenet_eval': 55,
    'benchmark_test.py::test_quick_cli_json_without_tensorflow': 55,
    'train_test.py::test_mocked_tfds_train_and_evaluate[cifar10,plain,adahessian]': 50,
    'configs_test.py::test_deep_config_trains_on_one_block_per_stage_and_branch[imagenet_r50-]': 45,
    'optim_test.py::test_adahessian_trains_a_tiny_dsop_model_in_the_train_step': 45,
    'train_test.py::test_mocked_tfds_train_and_evaluate[imagenet2012:gap]': 45,
    'train_test.py::test_digits_train_evaluate_resume_and_export': 45,
}


def pytest_collection_modifyitems(config, items):
  """Starts the LONG_TESTS first, spread over the pytest-xdist workers.

  `--dist worksteal` first hands each of its W workers one contiguous W-th of the collection, and a
  worker that runs dry later steals from the end of another's queue. A long test near the end of the
  collection then starts last and keeps one worker busy while the others idle. So each long test
  goes, longest first, to the front of the share with the fewest long-test seconds so far; the
  other tests keep their order. Without xdist the long tests simply come first.
  """
  def seconds(item):
    return next((s for name, s in LONG_TESTS.items() if name in item.nodeid), 0)
  workers = getattr(config, 'workerinput', {}).get('workercount', 1)
  long_tests = sorted((i for i in items if seconds(i)), key=seconds, reverse=True)
  rest = [i for i in items if not seconds(i)]
  sizes, left = [], len(items)
  for w in range(workers, 0, -1):  # worksteal's first split: len(pending) // nodes remaining.
    sizes.append(left // w)
    left -= sizes[-1]
  shares, loads = [[] for _ in sizes], [0] * len(sizes)
  for item in long_tests:
    open_shares = [k for k in range(len(sizes)) if len(shares[k]) < sizes[k]]
    k = min(open_shares, key=lambda k: loads[k])
    shares[k].append(item)
    loads[k] += seconds(item)
  start = 0
  for share, size in zip(shares, sizes):
    take = size - len(share)
    share += rest[start:start + take]
    start += take
  items[:] = [item for share in shares for item in share]


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
