"""The GPU check behind launch/gpu_check.sh: one JSON summary of what docs/benchmarks.md's GPU targets need.

On one accelerator, bf16, batch 256, synthetic data made on the device:
1. `dsop_jax.benchmark` of ResNet-50-s1 with its DSoP branches (configs/imagenet_r50.py): the
   DSoP/plain training step-time ratio against the FLOPs ratio, detached inference against the plain
   backbone, the iSQRT-COV micro-benchmark and each branch's pooling share;
2. the same benchmark's train part for plain ResNet-50-s2 (imagenet_r50.py:s2,plain): images/s;
3. `--train_steps` (200) training steps of plain ResNet-50-s2 and of DSoP ResNet-50-s1 on a task
   that can be learnt (each image a fixed random pattern of its class, of 10, plus noise, drawn
   afresh each step), through the library's own train step and optimiser: the main head's loss must
   fall (mean of the last tenth of the steps, at least 2, below half that of the first tenth). The
   recipe's learning rate is for batch 256 and scaled linearly below it.

It imports jax, flax, optax, numpy, absl and ml_collections, never TensorFlow, tfds or clu (a host
with jax[cuda] alone needs only ml_collections beside it: `launch/gpu_check.sh --bundle`). The exit
status is 1 when a training run's loss did not fall; the targets are reported, not enforced.
`--quick` is a CPU smoke run of the same code (one block per stage, one branch, 16x16, batch 8,
float32, 20 steps).
"""

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dsop_jax.models import registry
from dsop_jax.tools import benchmark
from dsop_jax.training import losses
from dsop_jax.training import optim
from dsop_jax.training import sharding
from dsop_jax.training import steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_BUDGET_S = 480.0  # The whole check, compilation included, on one H100/H200.
FULL = dict(batch_size=256, precision='bfloat16', image_size=0, steps=10, warmup=2, rounds=3,
            pool_batch=32, train_steps=200)
QUICK = dict(batch_size=8, precision='float32', image_size=16, steps=1, warmup=1, rounds=1,
             pool_batch=2, train_steps=20)
TASK_CLASSES = 10


def load_config(argument: str, quick: bool) -> Any:
  """configs/imagenet_r50.py with `argument`; with `quick`, one block per stage and one branch
  pooling 64 channels."""
  path = os.path.join(ROOT, 'configs', 'imagenet_r50.py')
  spec = importlib.util.spec_from_file_location('gpu_check_r50', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(argument)
  if quick:
    config.model.stage_sizes = (1, 1, 1, 1)
    if any(config.model.branches.blocks):
      config.model.branches.blocks = (0, 0, 0, 1)
      config.model.branches.channels = (64, 64, 64, 64)
  return config


def targets(s1: Dict[str, Any], s2: Dict[str, Any]) -> Dict[str, Any]:
  """docs/benchmarks.md's GPU targets, each with the measured value and whether it is met."""
  train, inference = s1['train'], s1['inference']
  share = max(b['pool_share'] for b in s1['pooling']['branches'].values())
  bound = 1.1 * train['xla_flops_ratio']
  rows = {
      'plain_r50_s2_images_per_s': (s2['train']['plain']['images_per_s'], '>= 5000',
                                    s2['train']['plain']['images_per_s'] >= 5000),
      'dsop_over_plain_r50_s1_step_time': (train['step_time_ratio'], f'<= 1.1 x {bound / 1.1:.3f}',
                                           train['step_time_ratio'] <= bound),
      'max_isqrt_cov_share_of_branch': (share, '< 0.10', share < 0.10),
      'detached_over_plain_inference': (inference['time_ratio'], 'within 2%',
                                        abs(inference['time_ratio'] - 1.0) <= 0.02),
  }
  return {name: {'value': v, 'target': t, 'met': bool(m)} for name, (v, t, m) in rows.items()}


def learnable_batches(batch_size: int, image_size: int, mesh: Any):
  """step -> batch: each image the fixed random pattern of its class plus noise, made on device."""
  patterns = jax.random.normal(jax.random.key(7), (TASK_CLASSES, image_size, image_size, 3))

  @jax.jit
  def make(step):
    key = jax.random.fold_in(jax.random.key(8), step)
    label_key, noise_key = jax.random.split(key)
    labels = jax.random.randint(label_key, (batch_size,), 0, TASK_CLASSES, jnp.int32)
    noise = jax.random.normal(noise_key, (batch_size, image_size, image_size, 3))
    return jax.lax.with_sharding_constraint(
        {'image': patterns[labels] + noise, 'label': labels}, sharding.data_sharded(mesh))

  return make


def training_run(config: Any, opts: Dict[str, Any]) -> Dict[str, Any]:
  """`train_steps` steps of the library's train step; the main head's loss at each step."""
  config = benchmark.benchmark_config(config, benchmark.Options(precision=opts['precision'],
                                                                image_size=opts['image_size']))
  mesh = sharding.create_mesh()
  n = opts['train_steps']
  config.train.batch_size = opts['batch_size']
  config.optim.lr_reference_batch = 256  # The recipe's rate at batch 256, scaled linearly below it.
  model = registry.create(config.model)
  tx = optim.create_optimizer(config, steps_per_epoch=n, num_steps=n)
  state = steps.init_state(model, tx, config, mesh)
  step = jax.jit(steps.make_train_step(losses.dsop_objective(model, registry.loss_weights(config)),
                                       tx), donate_argnums=(0,))
  batches = learnable_batches(opts['batch_size'], config.data.image_size, mesh)
  rng, main_losses, times = jax.random.key(0), [], []
  for i in range(n):
    start = time.perf_counter()
    state, metrics = step(state, batches(i), rng)
    main_losses.append(float(metrics['logits/loss']))  # Blocks: each step timed whole.
    times.append(time.perf_counter() - start)
  tenth = max(2, n // 10)
  first, last = float(np.mean(main_losses[:tenth])), float(np.mean(main_losses[-tenth:]))
  return {'model': config.model.name, 'heads': 1 + len(model.branches), 'steps': n,
          'first_tenth_loss': first, 'last_tenth_loss': last, 'loss_fell': last < 0.5 * first,
          'nonfinite_steps': int(np.sum(~np.isfinite(main_losses))),
          'first_step_s': times[0], 'median_step_ms': 1e3 * float(np.median(times[1:] or times)),
          'losses': [round(x, 4) for x in main_losses]}


def check(quick: bool, train_steps: int = 0) -> Dict[str, Any]:
  """Runs the whole check; returns the JSON summary."""
  opts = dict(QUICK if quick else FULL)
  if train_steps:
    opts['train_steps'] = train_steps
  start = time.perf_counter()
  bench = {k: opts[k] for k in ('batch_size', 'precision', 'image_size', 'steps', 'warmup',
                                'rounds', 'pool_batch')}
  s1_config, s2_config = load_config('', quick), load_config('s2,plain', quick)
  phases, results = {}, {}
  for name, work in (
      ('benchmark_r50_s1', lambda: benchmark.run(s1_config, benchmark.Options(
          parts=('train', 'inference', 'pooling'), **bench))),
      ('benchmark_r50_s2_plain', lambda: benchmark.run(s2_config, benchmark.Options(
          parts=('train',), **bench))),
      ('train_plain_r50_s2', lambda: training_run(s2_config, opts)),
      ('train_dsop_r50_s1', lambda: training_run(s1_config, opts))):
    phase_start = time.perf_counter()
    results[name] = work()
    phases[name] = time.perf_counter() - phase_start
  wall = time.perf_counter() - start
  runs = {'plain_r50_s2': results.pop('train_plain_r50_s2'),
          'dsop_r50_s1': results.pop('train_dsop_r50_s1')}
  versions = {m.__name__: getattr(m, '__version__', '') for m in (jax, flax, optax, ml_collections)}
  versions['ml_collections_from'] = os.path.dirname(ml_collections.__file__)
  return {'device': benchmark.device_info(), 'versions': versions, 'quick': quick, 'options': opts,
          **results,
          'last_stride': {'r50_s1': s1_config.model.last_stride,
                          'r50_s2': s2_config.model.last_stride},
          'training': runs, 'targets': targets(*results.values()), 'phase_s': phases,
          'wall_s': wall, 'within_time_budget': wall <= TIME_BUDGET_S,
          'ok': all(r['loss_fell'] and not r['nonfinite_steps'] for r in runs.values())}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='CPU smoke run of the same code.')
  parser.add_argument('--train_steps', type=int, default=0, help='Default: 200 (--quick: 20).')
  parser.add_argument('--output', default='', help='Also write the JSON summary to this file.')
  args = parser.parse_args()
  if args.train_steps < 0:
    parser.error(f'--train_steps = {args.train_steps} is invalid: must be >= 0 (0 = the default).')
  summary = check(args.quick, args.train_steps)
  text = json.dumps(summary)
  if args.output:
    with open(args.output, 'w') as f:
      f.write(text + '\n')
  print(text)
  sys.exit(0 if summary['ok'] else 1)


if __name__ == '__main__':
  main()
