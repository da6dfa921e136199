"""Benchmark: the --quick CLI end to end without TensorFlow, peak lookup, options, the eigh baseline
and the input-pipeline measurement."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dsop_jax.models import covpool
from dsop_jax.tools import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs the real CLI and reports which heavy modules it imported.
_RUN_CLI = """
import json, runpy, sys
sys.argv = ['benchmark'] + sys.argv[1:]
try:
  runpy.run_module('dsop_jax.benchmark', run_name='__main__')
except SystemExit as e:
  if e.code:
    raise
print(json.dumps(sorted(m for m in ('tensorflow', 'tensorflow_datasets', 'clu') if m in sys.modules)))
"""


def test_quick_cli_json_without_tensorflow():
  out = subprocess.run(
      [sys.executable, '-c', _RUN_CLI, '--config=configs/quickstart.py', '--quick', '--json',
       '--config.model.stage_sizes=(1,1,1)', '--config.model.branches.pattern=[1]'],
      cwd=ROOT, check=True, capture_output=True, text=True, timeout=300).stdout.strip().splitlines()
  result, imported = json.loads(out[-2]), json.loads(out[-1])
  assert imported == []  # Accelerator hosts have neither TensorFlow nor clu.
  assert result['options']['batch_size'] == 8 and result['image_size'] == 32
  assert result['options']['parts'] == ['train', 'inference', 'pooling']
  assert result['device']['platform'] == 'cpu' and result['device']['jax_version'] == jax.__version__
  train = result['train']
  for name in ('plain', 'dsop'):
    assert train[name]['step_time_ms'] > 0
    assert train[name]['images_per_s'] == pytest.approx(8e3 / train[name]['step_time_ms'])
    assert train[name]['mfu'] is None  # No peak for CPUs.
  # A one-block branch after each one-block stage of the quickstart network (measured: 2.50 by XLA,
  # 2.48 by the forward MAC count): the two counts agree.
  assert 2.0 < train['xla_flops_ratio'] < 3.0
  assert train['xla_flops_ratio'] == pytest.approx(train['forward_macs_ratio'], rel=0.05)
  assert train['dsop']['xla_gflops_per_step'] > train['plain']['xla_gflops_per_step']
  inference = result['inference']
  assert inference['same_program']
  assert inference['detached']['xla_gflops_per_step'] == inference['plain']['xla_gflops_per_step']
  pooling = result['pooling']
  assert [m['shape'] for m in pooling['fwd_bwd']] == [[2, 14, 14, 256], [2, 56, 56, 256]]
  assert sorted(pooling['branches']) == ['a_pds1_1', 'a_pds2_1', 'a_pds3_1']
  assert pooling['branches']['a_pds3_1']['pool_input_shape'] == [8, 8, 8, 64]
  assert all(0 < b['pool_share'] for b in pooling['branches'].values())


def test_table_format_names_every_part():
  result = {'device': benchmark.device_info(), 'options': {'batch_size': 8, 'precision': 'float32',
                                                           'rounds': 1, 'steps': 1, 'warmup': 0},
            'pooling': {'fwd_bwd': [{'shape': [2, 14, 14, 256], 'isqrt_cov_ms': 2.0, 'eigh_ms': 8.0,
                                     'speedup': 4.0}], 'branches': {}}}
  text = benchmark.format_report(result)
  assert '2x14x14x256' in text and '4.0x' in text and 'train:' not in text


@pytest.mark.parametrize('kind, precision, peak', [
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989.4), ('NVIDIA H100 80GB HBM3', 'float32', 494.7),
    ('NVIDIA H100 PCIe', 'bfloat16', 756.0), ('NVIDIA H200', 'bfloat16', 989.4),
    ('NVIDIA A100-SXM4-80GB', 'float32', 156.0), ('cpu', 'float32', None)])
def test_peak_tflops(kind, precision, peak):
  assert benchmark.peak_tflops(kind, precision) == peak


@pytest.mark.parametrize('change, message', [
    (dict(precision='float16'), '--precision'), (dict(parts=('train', 'disk')), '--parts'),
    (dict(steps=0), '--steps'), (dict(batch_size=0), 'batch_size')])
def test_bad_options_are_named(change, message):
  opts = benchmark.Options(**change)
  with pytest.raises(ValueError, match=message):
    benchmark.validate_options(opts)


def test_table_of_a_plain_config_has_no_ratio_line():
  """A config without branches measures its plain network alone (launch/gpu_check.py's ResNet-50-s2
  row; its test runs it)."""
  rates = {'step_time_ms': 10.0, 'images_per_s': 800.0, 'xla_gflops_per_step': 1.0,
           'achieved_tflops': 0.1, 'mfu': None}
  result = {'device': benchmark.device_info(), 'options': {'batch_size': 8, 'precision': 'float32',
                                                           'rounds': 1, 'steps': 1, 'warmup': 0},
            'train': {'plain': rates, 'peak_tflops': None}}
  text = benchmark.format_report(result)
  assert 'plain' in text and 'dsop' not in text and 'DSoP/plain' not in text


def test_eigh_baseline_equals_converged_newton_schulz():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))  # 64 positions, full-rank 6x6.
  np.testing.assert_allclose(benchmark.eigh_sqrt_pool(x), covpool.isqrt_cov_pool(x, num_iters=15),
                             rtol=2e-4, atol=2e-5)


def test_input_pipeline_throughput_runs_the_real_preprocessing():
  opts = benchmark.Options(input_images=6, parts=('input',))
  result = benchmark.run(None, opts)['input']
  assert result['images'] == 6 and result['image_size'] == 224
  assert result['threads'] == sorted({1, os.cpu_count()})
  for split in ('train', 'eval'):
    for name in benchmark.INPUT_SETS:
      for threads in result['threads']:
        assert result[f'{split}_{name}_{threads}t_images_per_s'] > 0
  assert result['one_core_images_per_s'] == result['train_imagenet_1t_images_per_s']
  # Realistic JPEGs, not blank ones; the photos larger.
  assert 10 < result['mean_jpeg_kb']['imagenet'] < result['mean_jpeg_kb']['photo']
  # uint8 pixels cross to the device (normalised there): a quarter of float32's bytes.
  assert (result['image_dtype'], result['bytes_per_image']) == ('uint8', 224 * 224 * 3)
