"""Speed of dsop_jax on synthetic data already on the device: what DSoP-Net costs to train, and
that the detached network costs what the plain one does.

Parts (`--parts`, comma-separated):
- train: step time and images/s of the plain first-order network and of the DSoP model with the same
  backbone, batch and precision (the plain network alone for a config without branches); their
  ratio next to the ratio of their FLOPs (XLA's cost analysis of the compiled steps, and the
  paper-style forward MACs of `dsop_jax.complexity`); achieved TFLOP/s and model-FLOPs utilisation
  (MFU) against the device's dense peak (GPUs in `PEAK_TFLOPS`).
- inference: the detached network (DSoP variables minus the branches) against the plain backbone
  built from scratch; the same program, so the same time and FLOPs.
- pooling: iSQRT-COV forward+backward at the paper's shapes (batch x 14x14 and 56x56 x 256 channels)
  against a matrix square root by eigendecomposition (`jnp.linalg.eigh`), and, for every branch of
  the config, its pooling's share of the branch's forward+backward time.
- input: ImageNet training preprocessing (JPEG decode, resize, crop, flip: the real
  `input_pipeline.preprocess`, whose uint8 output is normalised on the device) on JPEGs generated
  here, in images/s on one CPU core and on all, and the bytes per image sent to the device.
  This part alone needs TensorFlow; nothing else here imports it (or clu), so the benchmark runs on
  accelerator hosts that have only jax, flax, optax, orbax and ml_collections.

Each time is the fastest of `--rounds` rounds of `--steps` calls after `--warmup` calls (compilation
excluded), dispatched back to back and closed by `block_until_ready`; the plain and DSoP models
alternate rounds, so load on a shared machine hits both alike.

  python -m dsop_jax.benchmark --config=configs/imagenet_r50.py --batch_size=256 \
      --precision=bfloat16 [--parts=train,inference,pooling,input] [--json] [--quick]
"""

import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dsop_jax.models import branches as branches_lib
from dsop_jax.models import covpool
from dsop_jax.models import dsop
from dsop_jax.models import registry
from dsop_jax.models import stages
from dsop_jax.tools import complexity
from dsop_jax.training import losses
from dsop_jax.training import optim
from dsop_jax.training import sharding
from dsop_jax.training import steps

PARTS = ('train', 'inference', 'pooling', 'input')
PRECISIONS = ('float32', 'bfloat16')
# Dense peak TFLOP/s per device from NVIDIA's datasheets: (bfloat16, float32 run as TF32 on tensor
# cores, which XLA does for float32 convolutions and matmuls at default precision). First match of the
# name in jax's device_kind wins, so 'H100 PCIe' precedes 'H100' (SXM).
PEAK_TFLOPS = (('H100 PCIe', 756.0, 378.0), ('H100', 989.4, 494.7), ('H200', 989.4, 494.7),
               ('GH200', 989.4, 494.7), ('A100', 312.0, 156.0))
POOL_SHAPES = ((14, 14, 256), (56, 56, 256))  # (H, W, C) of the paper's covariance inputs.


@dataclasses.dataclass(frozen=True)
class Options:
  batch_size: int = 64  # Global batch of the train and inference parts.
  precision: str = 'float32'  # Activation dtype: float32 or bfloat16.
  image_size: int = 0  # 0 = the config's.
  steps: int = 10  # Timed calls per round.
  warmup: int = 2  # Untimed calls after compilation.
  rounds: int = 3  # Rounds; the fastest counts.
  pool_batch: int = 32  # Batch of the pooling micro-benchmark.
  input_images: int = 256  # Images preprocessed per input-pipeline measurement.
  parts: Sequence[str] = ('train', 'inference', 'pooling')


QUICK = dict(batch_size=8, steps=2, warmup=1, rounds=2, pool_batch=2, input_images=32)


def validate_options(opts: Options) -> None:
  """Raises ValueError naming the option and what it allows."""
  if opts.precision not in PRECISIONS:
    raise ValueError(f'--precision = {opts.precision!r} is invalid: allowed: {", ".join(PRECISIONS)}.')
  unknown = [p for p in opts.parts if p not in PARTS]
  if unknown or not opts.parts:
    raise ValueError(f'--parts = {",".join(opts.parts)!r} is invalid: a comma-separated subset of '
                     f'{", ".join(PARTS)}.')
  for name in ('batch_size', 'steps', 'rounds', 'pool_batch', 'input_images'):
    if getattr(opts, name) < 1:
      raise ValueError(f'--{name} = {getattr(opts, name)} is invalid: must be >= 1.')
  if opts.warmup < 0 or opts.image_size < 0:
    raise ValueError('--warmup and --image_size must be >= 0.')
  sharding.local_batch_size(opts.batch_size, 'benchmark batch_size')


def peak_tflops(device_kind: str, precision: str) -> Optional[float]:
  """Dense peak TFLOP/s of one device at `precision`, or None when unknown (CPUs)."""
  for name, bf16, tf32 in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return bf16 if precision == 'bfloat16' else tf32
  return None


def device_info() -> Dict[str, Any]:
  device = jax.devices()[0]
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'device_count': jax.device_count(), 'process_count': jax.process_count(),
          'jax_version': jax.__version__, 'cpu_cores': os.cpu_count()}


def _xla_flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled program per device (XLA's cost analysis; 2 per MAC)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0]
  return float(cost.get('flops', 0.0))


def _timed_rounds(runners: Dict[str, Callable[[int], Any]], opts: Options) -> Dict[str, float]:
  """Seconds per call of each runner (runner(n) makes n calls and returns something to block on)."""
  for run in runners.values():
    if opts.warmup:
      jax.block_until_ready(run(opts.warmup))
  best = {name: float('inf') for name in runners}
  for _ in range(opts.rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      jax.block_until_ready(run(opts.steps))
      best[name] = min(best[name], (time.perf_counter() - start) / opts.steps)
  return best


def _synthetic_batch(batch_size: int, image_size: int, num_classes: int, mesh: Any
                     ) -> Dict[str, jax.Array]:
  """A batch made on the devices, split over the data axis like real batches."""
  image_rng, label_rng = jax.random.split(jax.random.key(0))
  make = jax.jit(lambda: {
      'image': jax.random.normal(image_rng, (batch_size, image_size, image_size, 3), jnp.float32),
      'label': jax.random.randint(label_rng, (batch_size,), 0, num_classes, jnp.int32)},
                 out_shardings=sharding.data_sharded(mesh))
  return make()


def benchmark_config(config: ml_collections.ConfigDict, opts: Options) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = opts.precision
  if opts.image_size:
    config.data.image_size = opts.image_size
  registry.validate_model_config(config.model)
  registry.validate_loss_config(config)
  optim.validate_optim_config(config)
  return config


def _rates(step_time: float, flops: float, batch: int, peak: Optional[float]) -> Dict[str, Any]:
  achieved = flops / step_time / 1e12
  return {'step_time_ms': step_time * 1e3, 'images_per_s': batch / step_time,
          'xla_gflops_per_step': flops / 1e9, 'achieved_tflops': achieved,
          'mfu': achieved / peak if peak else None}


def train_benchmark(config: ml_collections.ConfigDict, opts: Options) -> Dict[str, Any]:
  """Train step of the plain network and of the DSoP model: time, throughput, FLOPs and MFU."""
  mesh = sharding.create_mesh()
  size, batch_size = config.data.image_size, opts.batch_size
  model = registry.create(config.model)
  weights = registry.loss_weights(config)
  variants = {'plain': (model.clone(branches=()), {'logits': weights['logits']})}
  if model.branches:  # A config without branches measures its plain network alone.
    variants['dsop'] = (model, weights)
  tx = optim.create_optimizer(config, steps_per_epoch=1000, num_steps=100_000)
  batch = _synthetic_batch(batch_size, size, config.model.num_classes, mesh)
  rng = jax.random.key(1)
  peak = peak_tflops(jax.devices()[0].device_kind, opts.precision)
  runners, flops, states = {}, {}, {}
  for name, (module, loss_weights) in variants.items():
    states[name] = steps.init_state(module, tx, config, mesh)
    step = jax.jit(steps.make_train_step(losses.dsop_objective(module, loss_weights), tx),
                   donate_argnums=(0,))
    compiled = step.lower(states[name], batch, rng).compile()
    flops[name] = _xla_flops(compiled)

    def run(n, name=name, compiled=compiled):
      metrics = None
      for _ in range(n):
        states[name], metrics = compiled(states[name], batch, rng)
      return metrics

    runners[name] = run
  times = _timed_rounds(runners, opts)
  result: Dict[str, Any] = {name: _rates(times[name], flops[name], batch_size, peak)
                            for name in variants}
  result['peak_tflops'] = peak
  if 'dsop' not in variants:
    return result
  macs = complexity.report(config)
  result.update({
      'step_time_ratio': times['dsop'] / times['plain'],
      'xla_flops_ratio': flops['dsop'] / flops['plain'],
      'forward_macs_ratio': macs['gflops_train'] / macs['gflops_test'],
  })
  return result


def inference_benchmark(config: ml_collections.ConfigDict, opts: Options) -> Dict[str, Any]:
  """Forward pass of the detached network against the plain backbone built from scratch."""
  mesh = sharding.create_mesh()
  size = config.data.image_size
  image = _synthetic_batch(opts.batch_size, size, config.model.num_classes, mesh)['image']
  example = jnp.zeros((1, size, size, 3), jnp.float32)
  dsop_variables = registry.init_variables(registry.create(config.model), jax.random.key(0),
                                         example)
  backbone = registry.create_backbone(config.model)
  variables = {
      'detached': dsop.detach(dsop_variables),
      'plain': registry.init_variables(backbone, jax.random.key(1), example),
  }
  forward = jax.jit(lambda v, x: backbone.apply(v, x, train=False)[0])
  runners, flops = {}, {}
  for name, v in variables.items():
    v = jax.device_put(v, sharding.replicated(mesh))
    compiled = forward.lower(v, image).compile()
    flops[name] = _xla_flops(compiled)
    runners[name] = lambda n, c=compiled, v=v: [c(v, image) for _ in range(n)][-1]
  times = _timed_rounds(runners, opts)
  peak = peak_tflops(jax.devices()[0].device_kind, opts.precision)
  result = {name: _rates(times[name], flops[name], opts.batch_size, peak) for name in variables}
  result['time_ratio'] = times['detached'] / times['plain']
  result['same_program'] = flops['detached'] == flops['plain']
  return result


def eigh_sqrt_pool(x: jax.Array) -> jax.Array:
  """Covariance pooling with an exact matrix square root by eigendecomposition (MPN-COV style)."""
  cov = covpool.covariance(x)
  w, v = jnp.linalg.eigh(cov)
  root = jnp.matmul(v * jnp.sqrt(jnp.maximum(w, 0.0))[:, None, :], jnp.swapaxes(v, 1, 2),
                    precision=jax.lax.Precision.HIGHEST)
  return covpool.triu_vector(root)


def _fwd_bwd_timer(fn: Callable[..., jax.Array], *args: Any) -> Callable[[int], Any]:
  """A runner of the compiled value and gradient (in every argument) of sum(fn(*args))."""
  grad = jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args))))
  compiled = jax.jit(grad).lower(*args).compile()
  return lambda n: [compiled(*args) for _ in range(n)][-1]


def pooling_benchmark(config: Optional[ml_collections.ConfigDict], opts: Options) -> Dict[str, Any]:
  """iSQRT-COV vs eigendecomposition at the paper's shapes, and pooling's share of each branch."""
  dtype = registry.DTYPES[opts.precision]
  micro = []
  for h, w, c in POOL_SHAPES:
    x = jax.random.normal(jax.random.key(0), (opts.pool_batch, h, w, c), dtype)
    times = _timed_rounds({'isqrt_cov': _fwd_bwd_timer(covpool.isqrt_cov_pool, x),
                           'eigh': _fwd_bwd_timer(eigh_sqrt_pool, x)}, opts)
    micro.append({'shape': [opts.pool_batch, h, w, c], 'isqrt_cov_ms': times['isqrt_cov'] * 1e3,
                  'eigh_ms': times['eigh'] * 1e3, 'speedup': times['eigh'] / times['isqrt_cov']})
  result: Dict[str, Any] = {'fwd_bwd': micro, 'branches': {}}
  if config is not None:
    result['branches'] = _branch_pool_shares(config, opts)
  return result


def _branch_pool_shares(config: ml_collections.ConfigDict, opts: Options) -> Dict[str, Any]:
  """Per branch: forward+backward time of the whole branch and of its pooling layer(s)."""
  size, dtype = config.data.image_size, registry.DTYPES[opts.precision]
  backbone = registry.create_backbone(config.model)
  image = jax.ShapeDtypeStruct((opts.batch_size, size, size, 3), jnp.float32)
  backbone_vars = jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x, train=False), image)
  _, features = jax.eval_shape(lambda v, x: backbone.apply(v, x, train=False), backbone_vars, image)
  stage_specs = stages.branch_block_specs(backbone)
  shares = {}
  for spec in registry.branch_specs(config.model):
    stage = stage_specs[spec.stage]
    branch = branches_lib.AuxBranch(spec, stage, config.model.num_classes, dtype)
    feature = jax.random.normal(jax.random.key(0), features[spec.attach].shape, dtype)
    variables = registry.init_variables(branch, jax.random.key(0), feature)

    def branch_loss(params, x, b=branch, stats=variables.get('batch_stats', {})):
      out, _ = b.apply({'params': params, 'batch_stats': stats}, x, train=True,
                       mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
      return sum(jnp.sum(o) for o in out.values())

    chain = branches_lib.reduction_channels(spec, stage.channels)
    pools = 1 + len(branches_lib.side_branch_names(spec, stage.channels))
    pooled = jax.random.normal(jax.random.key(1),
                               feature.shape[:3] + ((chain[-1] if chain else stage.channels),), dtype)
    times = _timed_rounds({'branch': _fwd_bwd_timer(branch_loss, variables['params'], feature),
                           'pool': _fwd_bwd_timer(covpool.get_pool(spec.pool, spec.num_iters),
                                                   pooled)}, opts)
    shares[spec.name] = {'input_shape': list(feature.shape), 'pool_input_shape': list(pooled.shape),
                         'pools': pools, 'branch_ms': times['branch'] * 1e3,
                         'pool_ms': times['pool'] * 1e3 * pools,
                         'pool_share': times['pool'] * pools / times['branch']}
  return shares


def _synthetic_jpegs(count: int, seed: int = 0, size: Tuple[int, int] = (375, 500),
                     quality: int = 90) -> List[bytes]:
  """JPEGs of `size` (height x width; alternately transposed) with smooth random content and
  noise: ImageNet's typical 500x375 by default, or larger photo-like ones."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  jpegs = []
  for i in range(count):
    h, w = size if i % 2 else size[::-1]
    coarse = rng.uniform(0, 255, (h // 25 + 1, w // 25 + 1, 3)).astype(np.float32)
    image = tf.image.resize(coarse, (h, w), method='bicubic')
    noise = rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    image = tf.cast(tf.clip_by_value(image + noise, 0, 255), tf.uint8)
    jpegs.append(tf.io.encode_jpeg(image, quality=quality).numpy())
  return jpegs


# The JPEG sets of the input part: ImageNet's typical size, and larger photos.
INPUT_SETS = {'imagenet': (375, 500), 'photo': (768, 1024)}


def _preprocess_rate(jpegs: Sequence[bytes], train: bool, threads: int, images: int,
                     image_size: int) -> Tuple[float, Any]:
  """(images/s, one output image) of `input_pipeline.preprocess` over `jpegs` on `threads`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from dsop_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from dsop_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  info = datasets.DATASETS['imagenet2012']
  ds = tf.data.Dataset.from_tensor_slices({'image': list(jpegs),
                                           'label': np.zeros(len(jpegs), np.int64)})
  ds = ds.repeat().take(images).enumerate().map(
      lambda i, ex: input_pipeline.preprocess(ex, tf.stack([tf.constant(0, tf.int64), i]),
                                              info=info, train=train, image_size=image_size),
      num_parallel_calls=threads)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.autotune.enabled = False
  ds = ds.with_options(options)
  for example in ds.take(2):  # Warm-up: graph tracing.
    image = example['image']
  start = time.perf_counter()
  for _ in ds:
    pass
  return images / (time.perf_counter() - start), image


def input_benchmark(opts: Options, image_size: int = 224) -> Dict[str, Any]:
  """Images/s of the ImageNet preprocessing, training (scale jitter, crop, flip) and evaluation
  (shorter side 256, centre crop), on 1 thread and on every core, for each JPEG set of
  INPUT_SETS: `{split}_{set}_{threads}t_images_per_s`. The training rate on ImageNet-sized JPEGs
  on one thread is also `one_core_images_per_s` (`all_cores_...` on every core)."""
  cores = os.cpu_count() or 1
  sets = {name: _synthetic_jpegs(min(opts.input_images, 64), size=size)
          for name, size in INPUT_SETS.items()}
  result: Dict[str, Any] = {'image_size': image_size, 'images': opts.input_images,
                            'threads': sorted({1, cores}),
                            'mean_jpeg_kb': {name: float(np.mean([len(j) for j in jpegs]) / 1024)
                                             for name, jpegs in sets.items()}}
  for split in ('train', 'eval'):
    for name, jpegs in sets.items():
      for threads in result['threads']:
        rate, image = _preprocess_rate(jpegs, split == 'train', threads, opts.input_images,
                                       image_size)
        result[f'{split}_{name}_{threads}t_images_per_s'] = rate
        if name == 'imagenet' and threads == 1:  # What crosses to the device, per image.
          result[f'{split}_image_dtype'] = image.dtype.name
          result[f'{split}_bytes_per_image'] = int(image.numpy().nbytes)
  result['image_dtype'], result['bytes_per_image'] = (result['train_image_dtype'],
                                                      result['train_bytes_per_image'])
  result['one_core_images_per_s'] = result['train_imagenet_1t_images_per_s']
  result['all_cores_images_per_s'] = result[f'train_imagenet_{cores}t_images_per_s']
  result['all_cores_threads'] = cores
  result['per_core_images_per_s'] = result['one_core_images_per_s']
  return result


def run(config: Optional[ml_collections.ConfigDict], opts: Options) -> Dict[str, Any]:
  """Runs the selected parts; returns one JSON-serialisable dict."""
  validate_options(opts)
  result: Dict[str, Any] = {'device': device_info(), 'options': dataclasses.asdict(opts)}
  result['options']['parts'] = list(opts.parts)
  needs_model = any(p in opts.parts for p in ('train', 'inference'))
  if config is None and needs_model:
    raise ValueError('--config is required for the train and inference parts.')
  if config is not None:
    config = benchmark_config(config, opts)
    result.update(model=config.model.name, image_size=config.data.image_size)
  if 'train' in opts.parts:
    result['train'] = train_benchmark(config, opts)
  if 'inference' in opts.parts:
    result['inference'] = inference_benchmark(config, opts)
  if 'pooling' in opts.parts:
    result['pooling'] = pooling_benchmark(config, opts)
  if 'input' in opts.parts:
    result['input'] = input_benchmark(opts)
  return result


def _fmt(value: Any, spec: str = '.2f') -> str:
  return '-' if value is None else format(value, spec)


def format_report(result: Dict[str, Any]) -> str:
  """Plain-text tables of a `run()` result."""
  d, o = result['device'], result['options']
  lines = [f"device: {d['device_kind']} x{d['device_count']} ({d['platform']}), jax {d['jax_version']}"
           f"; batch {o['batch_size']}, {o['precision']}, best of {o['rounds']} x {o['steps']} steps "
           f"after {o['warmup']} warm-up"]
  if 'model' in result:
    lines[0] += f"; {result['model']} at {result['image_size']}x{result['image_size']}"
  row = '{:<22}{:>12}{:>12}{:>14}{:>12}{:>8}'
  for part in ('train', 'inference'):
    if part not in result:
      continue
    r = result[part]
    lines += ['', f'{part}:', row.format('', 'step (ms)', 'images/s', 'GFLOP/step', 'TFLOP/s', 'MFU')]
    for name in ('plain', 'dsop') if part == 'train' else ('detached', 'plain'):
      if name not in r:
        continue
      v = r[name]
      lines.append(row.format(name, _fmt(v['step_time_ms']), _fmt(v['images_per_s'], '.1f'),
                              _fmt(v['xla_gflops_per_step'], '.1f'), _fmt(v['achieved_tflops'], '.3f'),
                              _fmt(v['mfu'] and 100 * v['mfu'], '.1f')))
    if part == 'train':
      if 'dsop' in r:
        lines.append(f"DSoP/plain: step time {r['step_time_ratio']:.2f}x, XLA FLOPs "
                     f"{r['xla_flops_ratio']:.2f}x, forward MACs {r['forward_macs_ratio']:.2f}x")
    else:
      lines.append(f"detached/plain time {r['time_ratio']:.3f}x; same FLOPs: {r['same_program']}")
  if 'pooling' in result:
    lines += ['', 'pooling, forward+backward (ms):',
              '{:<24}{:>12}{:>12}{:>10}'.format('shape', 'iSQRT-COV', 'eigh', 'speedup')]
    for m in result['pooling']['fwd_bwd']:
      lines.append('{:<24}{:>12.2f}{:>12.2f}{:>9.1f}x'.format(
          'x'.join(map(str, m['shape'])), m['isqrt_cov_ms'], m['eigh_ms'], m['speedup']))
    if result['pooling']['branches']:
      lines += ['{:<16}{:<22}{:>12}{:>10}{:>8}'.format('branch', 'pool input', 'branch ms',
                                                       'pool ms', 'share')]
      for name, b in result['pooling']['branches'].items():
        lines.append('{:<16}{:<22}{:>12.2f}{:>10.2f}{:>7.1f}%'.format(
            name, 'x'.join(map(str, b['pool_input_shape'])), b['branch_ms'], b['pool_ms'],
            100 * b['pool_share']))
  if 'input' in result:
    r = result['input']
    lines += ['', f"input pipeline (ImageNet preprocessing, {r['image_size']}px), images/s; "
              f"{r['bytes_per_image']} bytes ({r['image_dtype']}) per training image to the device"]
    lines.append('{:<8}{:<26}'.format('split', 'JPEGs') + ''.join(
        '{:>12}'.format(f'{t} thread' + 's' * (t > 1)) for t in r['threads']))
    for split in ('train', 'eval'):
      for name, size in INPUT_SETS.items():
        label = f"{name} {size[1]}x{size[0]}, {r['mean_jpeg_kb'][name]:.0f} KB"
        lines.append('{:<8}{:<26}'.format(split, label) + ''.join(
            '{:>12.1f}'.format(r[f'{split}_{name}_{t}t_images_per_s']) for t in r['threads']))
  return '\n'.join(lines)
