"""Complexity report: Table I parameter counts, MAC counting, and the CLI (table, --json, overrides)."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from dsop_jax.configs import imagenet_r18
from dsop_jax.configs import imagenet_r34
from dsop_jax.configs import imagenet_r50
from dsop_jax.configs import imagenet_seresnext101
from dsop_jax.models import covpool
from dsop_jax.tools import complexity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('get_config, train_m, test_params', [
    (imagenet_r18.get_config, 100.6, 11_689_512), (imagenet_r34.get_config, 110.7, 21_797_672)])
def test_table1_parameter_counts(get_config, train_m, test_params):
  rep = complexity.report(get_config())
  assert rep['params_train'] / 1e6 == pytest.approx(train_m, rel=0.005)
  assert rep['params_test'] == test_params
  assert rep['params_train'] == rep['params_test'] + sum(
      b['params'] for b in rep['branches'].values())


def test_resnet50_layout_matches_table1_within_one_percent():
  rep = complexity.report(imagenet_r50.get_config())
  assert rep['params_train'] / 1e6 == pytest.approx(181.9, rel=0.011)
  assert rep['gflops_train'] == pytest.approx(13.45, rel=0.005)
  assert rep['params_test'] == 25_557_032


def test_test_gflops_of_s1_resnets_match_table1():
  assert complexity.report(imagenet_r18.get_config())['gflops_test'] == pytest.approx(3.06, rel=0.01)
  assert complexity.report(imagenet_r34.get_config())['gflops_test'] == pytest.approx(5.61, rel=0.01)


def test_mac_counting_of_conv_dense_and_grouped_conv():
  x = jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32)
  conv = nn.Conv(6, (3, 3), padding=1, use_bias=False)
  grouped = nn.Conv(6, (3, 3), padding=1, feature_group_count=2, use_bias=False)
  dense = nn.Dense(5)
  for module, inp, macs in [(conv, x, 8 * 8 * 6 * 9 * 4), (grouped, x, 8 * 8 * 6 * 9 * 2),
                            (dense, jax.ShapeDtypeStruct((3, 7), jnp.float32), 3 * 7 * 5)]:
    variables = jax.eval_shape(module.init, jax.random.key(0), inp)
    assert complexity.count_macs(module.apply, variables, inp) == macs


def test_mac_counting_inside_scan_cond_and_while():
  """A scan's body counts per iteration, a cond its costliest branch (MPN-COV's
  `lax.platform_dependent` eigh), and a while loop that multiplies is refused."""
  a = jax.ShapeDtypeStruct((4, 3, 5), jnp.float32)
  w = jax.ShapeDtypeStruct((5, 2), jnp.float32)
  assert complexity.count_macs(lambda a, w: jax.lax.map(lambda x: x @ w, a), a, w) == 4 * 3 * 5 * 2
  two_products = lambda x, w: (x @ w) @ jnp.ones((2, 2))  # noqa: E731
  branches = lambda x, w: jax.lax.platform_dependent(  # noqa: E731
      x, w, cpu=lambda x, w: x @ w, default=two_products)
  assert complexity.count_macs(branches, a, w) == 4 * 3 * 5 * 2 + 4 * 3 * 2 * 2
  loop = lambda x, w: jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] @ w @ w.T),  # noqa: E731
                                         (0, x))[1]
  with pytest.raises(NotImplementedError, match='while loop that multiplies'):
    complexity.count_macs(loop, a, w)
  assert complexity.count_macs(lambda x: covpool.mpn_cov_pool(x), jax.ShapeDtypeStruct(
      (2, 3, 3, 8), jnp.float32)) == complexity.count_macs(
          lambda x: covpool.covariance(x), jax.ShapeDtypeStruct((2, 3, 3, 8), jnp.float32)) + (
              2 * 8 * 8 * 8)  # The covariance, then U diag(sqrt(lambda)) U^T.


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'dsop_jax.complexity', *args], cwd=ROOT, check=True,
                        capture_output=True, text=True).stdout


def test_cli_json_and_overrides():
  rep = json.loads(_cli('--config=configs/imagenet_r18.py', '--json'))
  assert {'params_train', 'params_test', 'gflops_train', 'gflops_test'} <= set(rep)
  assert sorted(rep['branches']) == ['a_pds2', 'a_pds3', 'a_pds4', 'a_pds5']
  # Table VIII, 64 channels: 64,64*,64*,64* -> 32.7M training parameters in the paper.
  rep64 = json.loads(_cli('--config=configs/imagenet_r18.py', '--json',
                          '--config.model.branches.channels=(64,64,64,64)'))
  assert rep64['params_train'] / 1e6 == pytest.approx(32.7, rel=0.01)
  table = _cli('--config=configs/cifar_wrn28_10.py:cifar10')
  assert 'wrn28_10 at 32x32' in table and 'a_pds3_4' in table


def test_resnet18_dsop_parameter_count_exactly_by_hand():
  """Table I, 18-layer column, counted from the architecture: 2 basic blocks per branch (18C^2 + 4C
  each), no DR where the stage has no more channels than the target, DR 512->256 at a_pds5."""
  fc = lambda c: (c * (c + 1) // 2) * 1000 + 1000
  blocks = lambda c: 2 * (18 * c * c + 4 * c)
  want = {'a_pds2': blocks(64) + fc(64), 'a_pds3': blocks(128) + fc(128),
          'a_pds4': blocks(256) + fc(256), 'a_pds5': blocks(512) + 512 * 256 + 2 * 256 + fc(256)}
  rep = complexity.report(imagenet_r18.get_config())
  assert {k: v['params'] for k, v in rep['branches'].items()} == want
  assert rep['params_train'] == 11_689_512 + sum(want.values())


def test_report_runs_for_se_resnext101_with_and_without_branches():
  config = imagenet_seresnext101.get_config()
  assert complexity.report(config)['image_size'] == 256  # The teacher's training crops.
  config.data.image_size = 224
  plain = complexity.report(config)
  assert plain['params_train'] == plain['params_test'] == 48_955_416 and not plain['branches']
  assert plain['gflops_test'] == pytest.approx(8.0, rel=0.05)  # Published: about 8.0 GMACs.
  dsop = complexity.report(imagenet_seresnext101.get_config('blocks=1-0-0-1'))
  assert list(dsop['branches']) == ['a_pds2', 'a_pds5'] and dsop['params_test'] == 48_955_416
