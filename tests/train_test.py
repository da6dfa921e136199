"""End-to-end training: real digits, mocked TFDS cifar10, resume, export, data
parallelism on 8 simulated devices, non-finite losses, and bad input stopping before compilation."""

import glob
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import absl
import clu
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from dsop_jax import export as export_cli
from dsop_jax.configs import cifar_resnet20
from dsop_jax.data import datasets
from dsop_jax.data import input_pipeline
from dsop_jax.deploy import artifact
from dsop_jax.models import dsop
from dsop_jax.models import registry
from dsop_jax.training import checkpointing
from dsop_jax.training import export
from dsop_jax.training import losses
from dsop_jax.training import optim
from dsop_jax.training import restoring
from dsop_jax.training import runs
from dsop_jax.training import sharding
from dsop_jax.training import steps
from dsop_jax.training import train
from tests import conftest
from tests import data_parallel_run
from tests import train_helpers

HERE = os.path.dirname(os.path.abspath(__file__))
METADATA = datasets.MOCK_METADATA
# The tiny digits config's network (one 1-block branch, after the last stage) for the
# `dsop_jax.main` subprocesses: what they test is the run, and the smallest DSoP-Net shows it.
TINY_OVERRIDES = train_helpers.tiny_model_flags()


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_digits_train_evaluate_resume_and_export(tmp_path, capsys):
  config = train_helpers.tiny_digits_config(num_epochs=0.5)  # 11 steps.
  full = train.train_and_evaluate(config, str(tmp_path / 'full'))
  assert int(full.step) == 11
  records = _metrics(tmp_path / 'full')
  assert [r['step'] for r in records] == [11]
  heads = {'logits', 'a_pds3'}
  assert set(records[0]['eval']) == heads and set(records[0]['train']) == heads
  for metrics in records[0]['eval'].values():
    assert set(metrics) == {'loss', 'top1', 'top5'} and 0 <= metrics['top1'] <= metrics['top5'] <= 1
  assert checkpointing.Checkpointer(str(tmp_path / 'full')).manager.all_steps() == [6, 9, 11]

  # Interrupted after 6 steps, then resumed with the full schedule: identical to uninterrupted,
  # also with its checkpoints written in the background (config.train.async_checkpointing).
  interrupted = str(tmp_path / 'resumed')
  train.train_and_evaluate(train_helpers.tiny_digits_config(num_epochs=0.25,
                                                            async_checkpointing=True), interrupted)
  assert checkpointing.Checkpointer(interrupted).manager.all_steps() == [3, 6]
  # Training time adds up over a resumed run's segments: the first one's, as recorded, plus the
  # second's (recorded as 1000 s to tell them apart).
  first_segment = _metrics(interrupted)
  assert 0 < first_segment[-1]['train_seconds'] < 1000
  first_segment[-1]['train_seconds'] = 1000.0
  with open(os.path.join(interrupted, 'metrics.jsonl'), 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in first_segment))
  resumed = train.train_and_evaluate(train_helpers.tiny_digits_config(
      num_epochs=0.5, async_checkpointing=True), interrupted)
  assert int(resumed.step) == 11
  for a, b in zip(_leaves((full.params, full.batch_stats, full.opt_state)),
                  _leaves((resumed.params, resumed.batch_stats, resumed.opt_state))):
    np.testing.assert_array_equal(a, b)
  assert _metrics(interrupted)[-1]['eval'] == records[0]['eval']
  assert 1000 < _metrics(interrupted)[-1]['train_seconds'] < 1000 + records[0]['train_seconds'] * 3

  # Export -> load gives the trained main head's predictions.
  out = str(tmp_path / 'export')
  export.export(str(tmp_path / 'full'), out)
  module, variables = artifact.load(out)
  batch = next(input_pipeline.eval_batches(config, local_batch_size=120))
  info = datasets.dataset_info(config)
  batch['image'] = steps.normalise_images(jnp.asarray(batch['image']), info.mean, info.std)
  deployed = jax.jit(lambda v, x: module.apply(v, x, train=False)[0])(variables, batch['image'])
  model = registry.create(config.model)
  main = jax.jit(lambda v, x: model.apply(v, x, train=False)['logits'])(
      {'params': full.params, 'batch_stats': full.batch_stats}, batch['image'])
  np.testing.assert_array_equal(np.asarray(deployed), np.asarray(main))
  with pytest.raises(ValueError, match='already holds an export; pass --overwrite'):
    export.export(str(tmp_path / 'full'), out)
  # The command line, replacing the export (its refusal without --overwrite is the one above).
  code = train_helpers.run_cli(export_cli.cli, ['export', f'--workdir={tmp_path / "full"}',
                                            f'--output_dir={out}', '--overwrite', '--step=11'])
  assert not code and f'Exported the detached first-order network to {out}' in capsys.readouterr().out
  evaluated = train.evaluate_checkpoint(config, str(tmp_path / 'full'), export_dir=out)
  assert evaluated['logits'] == pytest.approx(records[0]['eval']['logits'], rel=1e-5)


# Table IX's AdaHessian row on mocked cifar10 (plain: AdaHessian on a DSoP model is tested in
# optim_test.py; the plain row keeps the forward-over-reverse program small to compile). Training
# on mocked TFDS data with DSoP branches, then evaluating the export, runs in the notebooks' mock
# modes (notebooks_test): the CIFAR ResNet-20 with and without branches on cifar10, the tiny
# ResNet-18 with two DSoP branches on imagenet2012. The second-order head of Table XI with its PSDR
# side heads trains in configs_test (ResNet-50) and detaches bit-identically in gsop_test.
def test_mocked_cifar10_trains_with_adahessian(tmp_path):
  # One block per stage, as the reproduce_cifar notebook's mock mode trains (so the two share
  # their compiled evaluation programs).
  config = cifar_resnet20.get_config('cifar10,plain,adahessian')
  config.model.stage_sizes = (1, 1, 1)
  config.data.shuffle_buffer = 64
  config.train.update(batch_size=16, num_epochs=0.5, log_every_steps=1)
  config.eval.batch_size = 32
  with tfds.testing.mock_data(num_examples=64, data_dir=METADATA):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2
  # Its Hessian moment was updated from H z in both steps.
  assert int(state.opt_state[0].count) == 2
  assert float(optax.tree.norm(state.opt_state[0].nu)) > 0
  (record,) = _metrics(tmp_path)
  assert set(record['eval']) == {'logits'}
  assert np.isfinite(record['eval']['logits']['loss'])


def test_a_checkpoint_at_the_end_of_every_epoch(tmp_path):
  config = train_helpers.tiny_digits_config(num_epochs=2.0, checkpoint_every_steps=100,
                                            keep_checkpoints=5, checkpoint_every_epoch=True)
  config.data.train_subset = 128  # 2 steps per epoch of 64.
  train.train_and_evaluate(config, str(tmp_path / 'with'))
  assert checkpointing.Checkpointer(str(tmp_path / 'with')).manager.all_steps() == [2, 4]
  config.train.checkpoint_every_epoch = False
  train.train_and_evaluate(config, str(tmp_path / 'without'))
  assert checkpointing.Checkpointer(str(tmp_path / 'without')).manager.all_steps() == [4]


def test_fashion_mnist_trains_from_its_idx_files_on_a_subset(tmp_path, monkeypatch):
  config = train_helpers.tiny_digits_config(num_epochs=1.0)  # 128 of 150 images: 2 steps.
  config.data.update(dataset='fashion_mnist', train_subset=128, shuffle_buffer=128,
                     data_dir=train_helpers.write_fashion_mnist(tmp_path / 'idx', 150, 30))
  calls = []  # Each section of the config is validated once per start, by the module owning it.
  for module, name in ((registry, 'validate_model_config'), (registry, 'validate_loss_config'),
                       (optim, 'validate_optim_config'),
                       (input_pipeline, 'validate_data_config')):
    def spy(*args, _name=name, _real=getattr(module, name)):
      calls.append(_name)
      return _real(*args)
    monkeypatch.setattr(module, name, spy)
  # Two steps of 64 accumulated into one update of 128, its gradient clipped; the second profiled;
  # a moving average of the weights; Mixup or CutMix on each batch.
  config.loss.update(mixup_alpha=0.2, cutmix_alpha=1.0)
  config.train.update(accumulate_steps=2, profile_steps=(1, 2))
  config.optim.update(clip_grad_norm=1.0, ema_decay=0.75)
  state = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert glob.glob(str(tmp_path / 'work/profile/plugins/profile/*/*.xplane.pb'))
  assert sorted(calls) == ['validate_data_config', 'validate_loss_config',
                           'validate_model_config', 'validate_optim_config']
  assert int(state.step) == 2
  assert (int(state.opt_state.gradient_step), int(state.opt_state.mini_step)) == (1, 0)
  # The parameters moved once (the second step), so their average is 0.75 * initial + 0.25 * new.
  model = registry.create(config.model)
  tx = optim.create_optimizer(config, steps_per_epoch=2, num_steps=2)
  initial = registry.jit_init(steps.state_init_fn(model, tx, 32))(jax.random.key(0))
  for average, start, new in zip(*(jax.tree.leaves(t) for t in (
      state.ema['params'], initial.params, state.params))):
    np.testing.assert_allclose(average, 0.75 * start + 0.25 * new, rtol=1e-5, atol=1e-7)
  evaluated = train.evaluate_checkpoint(config, str(tmp_path / 'work'), ema=True)
  assert evaluated['logits'] == pytest.approx(_metrics(tmp_path / 'work')[-1]['eval']['ema'],
                                              rel=1e-5)
  out = export.export(str(tmp_path / 'work'), str(tmp_path / 'ema_export'), ema=True)
  for a, b in zip(jax.tree.leaves(artifact.load(out)[1]),
                  jax.tree.leaves(export.detach(state.ema))):
    np.testing.assert_array_equal(a, b)
  (record,) = _metrics(tmp_path / 'work')
  # The card scores the exported weights: the average's score for an --ema export (scores
  # rewritten apart here, as the tiny run's may coincide).
  record['eval']['ema']['top1'], record['eval']['logits']['top1'] = 0.5, 0.25
  (tmp_path / 'work' / 'metrics.jsonl').write_text(json.dumps(record) + '\n')
  for ema, name, top1 in ((True, 'moving average', 0.5), (False, 'trained', 0.25)):
    out = export.export(str(tmp_path / 'work'), str(tmp_path / f'card_{ema}'), ema=ema)
    card = json.loads((tmp_path / f'card_{ema}' / 'model_card.json').read_text())
    assert (card['weights'], card['main_head_eval_top1']) == (name, top1)
  assert set(record['eval']) == set(registry.head_names(config.model)) | {'ema'}
  assert all(np.isfinite(m['loss']) for m in record['eval'].values())
  assert runs.workdir_config(str(tmp_path / 'work')).data.train_subset == 128


def _start_logged(command, log_path, **kwargs):
  """(process, log path): `command` started from the repository root, its output to `log_path`."""
  with open(log_path, 'w') as log:
    return subprocess.Popen(command, cwd=os.path.dirname(HERE), stdout=log,
                            stderr=subprocess.STDOUT, **kwargs), log_path


def _succeeds(process, log_path, timeout_s=600):
  assert process.wait(timeout=timeout_s) == 0, open(log_path).read()[-3000:]


def test_data_parallel_8_devices_matches_1_device(tmp_path):
  """One training step (data split over 8 devices, BN statistics over the global batch, gradient
  all-reduce, SGD update) and the evaluation after it agree with 1 device to float tolerance.

  Only one step is compared: early training is chaotic here (a 1e-7 relative change of the initial
  weights grows to 2e-2 absolute after 4 steps on one device), so any rounding difference between
  reduction orders would be amplified the same way over more steps.
  """
  # 8 devices in a subprocess; meanwhile the same on this process's one device.
  eight = _start_logged(
      [sys.executable, os.path.join(HERE, 'data_parallel_run.py'), str(tmp_path / 'work8'),
       str(tmp_path / '8.npz')], tmp_path / '8.log',
      env=dict(os.environ, XLA_FLAGS=conftest.xla_flags('--xla_force_host_platform_device_count=8')))
  data_parallel_run.main(str(tmp_path / 'work1'), str(tmp_path / '1.npz'))
  _succeeds(*eight)
  results = {devices: dict(np.load(tmp_path / f'{devices}.npz')) for devices in (1, 8)}
  assert int(results[1].pop('devices')) == 1 and int(results[8].pop('devices')) == 8
  m1, m8 = json.loads(str(results[1].pop('metrics'))), json.loads(str(results[8].pop('metrics')))
  assert sorted(results[1]) == sorted(results[8])
  # Norm-relative differences. BN biases start at 0, so after one step they are one update, a sum
  # of heavily cancelling terms whose rounding depends on the reduction order: the largest seen was
  # 7.0e-3 for BN biases on a 2-core AMD EPYC (AVX2), 9e-4 on an earlier machine, against at most
  # 9.8e-5 for every tensor that is not a bias and a median of 1.6e-7. A real mismatch such as
  # per-device BN statistics changes gradients by percents, and most tensors with them.
  relative = {key: np.linalg.norm(results[8][key] - a) / np.linalg.norm(a)
              for key, a in results[1].items()}
  for key, difference in relative.items():
    assert difference <= (3e-2 if key.endswith("['bias']") else 1e-3), (key, difference)
  assert np.median(list(relative.values())) <= 1e-5, relative
  for head in m1:
    assert m8[head]['loss'] == pytest.approx(m1[head]['loss'], rel=1e-5)
    assert m8[head]['top1'] == pytest.approx(m1[head]['top1'], abs=1 / 360)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path):
  config = train_helpers.tiny_digits_config(checkpoint_every_steps=1)
  config.optim.learning_rate = 1e30
  with pytest.raises(FloatingPointError, match=r'Non-finite .* at step \d+; the update was rejected'):
    train.train_and_evaluate(config, str(tmp_path))
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  last = checkpointer.latest_step()
  assert last is not None
  variables = restoring.restore_variables(config, str(tmp_path))
  assert all(np.all(np.isfinite(x)) for x in _leaves(variables))


def test_overflowing_branch_is_rejected_and_named_by_the_step(caplog):
  """A step whose branch input overflows: the update is rejected in the jitted step (state
  untouched), and the host names the head whose loss went bad; 'skip' logs it and goes on."""
  import logging  # pylint: disable=g-import-not-at-top
  config = train_helpers.tiny_digits_config()
  model = registry.create(config.model)
  tx = optax.sgd(0.1)
  state = registry.jit_init(steps.state_init_fn(model, tx, 32))(jax.random.key(0))
  # Huge images overflow float32 in the first BatchNorm's variance; the branch heads go
  # non-finite (the main head stays finite here), and they are the ones named.
  batch = {'image': jnp.full((4, 32, 32, 3), 1e30).at[:, :16].set(-1e30),
           'label': jnp.arange(4, dtype=jnp.int32)}
  step = jax.jit(steps.make_train_step(
      losses.dsop_objective(model, registry.loss_weights(config)), tx))
  new_state, metrics = step(state, batch, jax.random.key(1))
  assert float(metrics['nonfinite']) == 1.0 and int(new_state.step) == 1
  for a, b in zip(_leaves((new_state.params, new_state.batch_stats, new_state.opt_state)),
                  _leaves((state.params, state.batch_stats, state.opt_state))):
    np.testing.assert_array_equal(a, b)
  named = r"Non-finite loss in head\(s\) \['a_pds3'\] at step 8"
  with pytest.raises(FloatingPointError, match=named + r'; .* last checkpoint \(step 6\) is intact'):
    train._check_finite([metrics], 7, 'stop', 6)  # pylint: disable=protected-access
  with caplog.at_level(logging.WARNING):
    train._check_finite([metrics], 7, 'skip', 6)  # pylint: disable=protected-access
  assert 'Skipping it (config.train.on_nonfinite = skip)' in caplog.text
  # 'skip' gives up after more than max_consecutive_skips rejected steps in a row; a good step
  # resets the count.
  good = {**metrics, 'nonfinite': 0.0}
  assert train._check_finite([metrics, metrics, good, metrics], 7, 'skip', 6, 0, 2) == 1  # pylint: disable=protected-access
  with pytest.raises(FloatingPointError, match=r'3 steps in a row were rejected up to step 9 '
                                               r'\(config.train.max_consecutive_skips = 2\)'):
    train._check_finite([metrics, metrics], 7, 'skip', 6, 1, 2)  # pylint: disable=protected-access


def test_a_finite_loss_with_a_non_finite_new_state_is_rejected():
  """Images of 1e18: the loss and gradient stay finite, but the stem's BN batch variance overflows
  float32, so the updated running statistics would be Inf. The step rejects the update: nothing
  non-finite reaches the state, hence no checkpoint or export."""
  model = dsop.DSoPNet(backbone=conftest.TinyResNet(), branches=(), num_classes=5)
  tx = optax.sgd(0.1)
  state = registry.jit_init(steps.state_init_fn(model, tx, 32))(jax.random.key(0))
  batch = {'image': jnp.full((4, 32, 32, 3), 1e18, jnp.float32).at[0].set(-1e18),
           'label': jnp.arange(4) % 5, 'mask': jnp.ones(4, bool)}
  step = jax.jit(steps.make_train_step(losses.dsop_objective(model, {'logits': 1.0}), tx))
  new_state, metrics = step(state, batch, jax.random.key(1))
  assert np.isfinite(float(metrics['loss']))
  assert float(metrics['nonfinite']) == float(metrics['nonfinite_state']) == 1.0
  assert int(new_state.step) == 1
  for a, b in zip(_leaves((state.params, state.batch_stats, state.opt_state)),
                  _leaves((new_state.params, new_state.batch_stats, new_state.opt_state))):
    np.testing.assert_array_equal(a, b)


def _config_error(config, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')  # Stopped before building anything.


def _untyped(parent, section, **fields):
  """parent.section with `fields` set whatever their type (as a config.json can hold them)."""
  setattr(parent, section, ml_collections.ConfigDict({**parent[section].to_dict(), **fields}))


@pytest.mark.parametrize('mutate, match', [
    (lambda c: setattr(c.model, 'name', 'resnet19'), r'config.model.name = .resnet19. is invalid'),
    (lambda c: setattr(c.model.branches, 'pattern', '[0,1]'), r'config.model.branches.pattern'),
    (lambda c: setattr(c.loss, 'betas', (0.1, -0.2, 0.3)), r'config.loss.betas'),
    (lambda c: setattr(c.train, 'batch_size', 0), r'config.train.batch_size = 0 is invalid'),
    (lambda c: setattr(c.train, 'policy', 'three_phase'), r'config.train.policy'),
    (lambda c: setattr(c.optim, 'name', 'adamw'), r'config.optim.name'),
    (lambda c: setattr(c.model, 'num_classes', 100), r'config.model.num_classes = 100 is invalid'),
    (lambda c: setattr(c.data, 'dataset', 'mnist'),  # A TFDS name, not prepared here.
     r'config.data.dataset = .mnist. is not prepared at config.data.data_dir'),
    (lambda c: setattr(c.data, 'dataset', 'mnist_digits'), r'config.data.dataset = .mnist_digits. is invalid'),
    (lambda c: setattr(c.train, 'checkpoint_every_steps', 0),
     r'config.train.checkpoint_every_steps = 0 is invalid: must be an integer >= 1'),
    (lambda c: setattr(c.loss, 'label_smoothing', 1.0), r'config.loss.label_smoothing = 1.0'),
    (lambda c: setattr(c.data, 'shuffle_buffer', 0), r'config.data.shuffle_buffer = 0 is invalid'),
    (lambda c: setattr(c.data, 'image_size', 16), r'config.data.image_size = 16 is invalid'),
    (lambda c: setattr(c.train, 'seed', -1), r'config.train.seed = -1 is invalid'),
    (lambda c: setattr(c.data, 'process_split', 'hosts'),
     r"config.data.process_split = 'hosts' is invalid: allowed: examples, files"),
    # Runs that would train for no step at all, or never end.
    (lambda c: setattr(c.train, 'batch_size', 2000),
     r'config.train.batch_size = 2000 is invalid: the training split of digits has 1437 examples'),
    (lambda c: setattr(c.train, 'num_epochs', 0.01),
     r'config.train.num_epochs = 0.01 is invalid: it gives 0 training steps at 22 steps per epoch'),
    (lambda c: setattr(c.train, 'num_epochs', float('inf')),
     r'config.train.num_epochs = inf is invalid: must be a finite number > 0'),
    (lambda c: setattr(c.loss, 'cutmix_alpha', -1.0), r'config.loss.cutmix_alpha = -1.0 is invalid'),
    (lambda c: setattr(c.train, 'profile_steps', (5, 5)),
     r'config.train.profile_steps = \(5, 5\) is invalid: give \(first, last\)'),
    (lambda c: setattr(c.train, 'max_consecutive_skips', 0),
     r'config.train.max_consecutive_skips = 0 is invalid'),
    # Configs read from JSON escape ConfigDict's type checks.
    (lambda c: _untyped(c, 'optim', nesterov=1),
     r'config.optim.nesterov = 1 is invalid: allowed: True, False'),
    (lambda c: _untyped(c.model, 'branches', psdr_aux='yes'),
     r"config.model.branches.psdr_aux = 'yes' is invalid: allowed: True, False"),
    (lambda c: _untyped(c, 'data', inception_crop=0),
     r'config.data.inception_crop = 0 is invalid: allowed: True, False'),
])
def test_bad_config_stops_before_compilation(tmp_path, mutate, match):
  config = train_helpers.tiny_digits_config()
  mutate(config)
  _config_error(config, match, tmp_path)


def test_a_workdir_is_trained_by_one_run_at_a_time(tmp_path):
  """A second training run on a workdir is refused, naming the holder, before it writes anything;
  the holder's lock goes with it when it dies (here by SIGKILL), so the workdir is free again."""
  workdir = str(tmp_path / 'work')
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time\nfrom dsop_jax.training import runs\n'
       'with runs.workdir_lock(sys.argv[1]):\n  print("held", flush=True)\n  time.sleep(600)',
       workdir], cwd=os.path.dirname(HERE), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(ValueError, match=rf"is being trained by host \S+ pid {holder.pid} since .*"
                                         r"one training run at a time per workdir"):
      train.train_and_evaluate(train_helpers.tiny_digits_config(), workdir)
    assert sorted(os.listdir(workdir)) == ['train.lock']  # Nothing else written.
  finally:
    holder.kill()
    holder.wait()
  with runs.workdir_lock(workdir):  # Not stuck after the holder's SIGKILL.
    assert str(os.getpid()) in open(os.path.join(workdir, 'train.lock')).read()


def test_urls_orbax_cannot_write_are_refused_not_written_locally(tmp_path, monkeypatch):
  """gs:// works (remote_workdir_test); other schemes are refused by name, before anything is
  written (formerly they became a local directory named after the scheme)."""
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r"--workdir='s3://bucket/run' is invalid: s3:// is not "
                                       r'supported; .* gs:// URL'):
    train.train_and_evaluate(train_helpers.tiny_digits_config(), 's3://bucket/run')
  with pytest.raises(ValueError, match=r"--output_dir='memory://export' is invalid"):
    export.export(str(tmp_path), 'memory://export')
  assert not os.listdir(tmp_path)


def test_unprepared_dataset_is_named(tmp_path):
  config = cifar_resnet20.get_config('cifar10')
  config.data.data_dir = str(tmp_path / 'no_data_here')
  _config_error(config, r"config.data.dataset = 'cifar10' is not prepared at config.data.data_dir",
                tmp_path)


def test_early_removal_freezes_branches_after_the_removal_step(tmp_path):
  config = train_helpers.tiny_digits_config(policy='early_removal', remove_branches_at_epoch=3 / 22,
                                            checkpoint_every_steps=3)  # Branches removed at step 3.
  final = train.train_and_evaluate(config, str(tmp_path))
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  at_removal, _ = checkpointer.restore(jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), final), step=3)
  for name in final.params:
    same = all(np.array_equal(a, b) for a, b in zip(_leaves(final.params[name]),
                                                     _leaves(at_removal.params[name])))
    assert same == (name != 'backbone'), name
  # The branches' optimiser state (SGD momentum) is held too (optim.freeze), the backbone's moves.
  for (path, a), b in zip(jax.tree.leaves_with_path(final.opt_state),
                          jax.tree.leaves(at_removal.opt_state)):
    name = jax.tree_util.keystr(path)
    if "'backbone'" in name or "'a_pds" in name:  # Not the schedule's step counter.
      assert np.array_equal(a, b) == ("'backbone'" not in name), name
  assert set(_metrics(tmp_path)[-1]['train']) == {'logits'}  # Only the main head after removal.


def test_two_phase_trains_branches_on_a_frozen_backbone(tmp_path):
  plain = train_helpers.tiny_digits_config('none', num_epochs=2 / 22)
  train.train_and_evaluate(plain, str(tmp_path / 'plain'))
  export.export(str(tmp_path / 'plain'), str(tmp_path / 'backbone'))
  _, backbone = artifact.load(str(tmp_path / 'backbone'))

  config = train_helpers.tiny_digits_config(num_epochs=2 / 22, policy='two_phase',
                                            backbone_checkpoint=str(tmp_path / 'backbone'))
  state = train.train_and_evaluate(config, str(tmp_path / 'branches'))
  for a, b in zip(_leaves(backbone), _leaves({'params': state.params['backbone'],
                                              'batch_stats': state.batch_stats['backbone']})):
    np.testing.assert_array_equal(a, b)
  heads = set(_metrics(tmp_path / 'branches')[-1]['eval'])
  assert heads == {'logits', 'a_pds3'}


def test_two_phase_refuses_a_backbone_of_another_network(tmp_path):
  other = train_helpers.tiny_digits_config('none')
  other.model.name = 'resnet18'  # 4 stages: per-stage fields need 4 entries.
  other.model.stage_sizes = ()
  other.model.branches.channels = (8,) * 4
  other.model.branches.reduction = ('direct',) * 4
  other.loss.betas = (0.0,) * 4
  exported = train_helpers.write_fresh_export(other.model, str(tmp_path / 'r18'))
  config = train_helpers.tiny_digits_config(policy='two_phase', backbone_checkpoint=exported)
  with pytest.raises(ValueError, match='do not match the expected structure'):
    train.train_and_evaluate(config, str(tmp_path / 'branches'))


def _orbax_info_lines(log):
  """The INFO lines of an absl log written from a module that only Orbax has."""
  basenames = lambda package: {f for _, _, files in os.walk(os.path.dirname(package.__file__))
                               for f in files if f.endswith('.py')}
  others = set().union(*map(basenames, (jax, absl, clu, checkpointing)))
  orbax_only = basenames(ocp) - others
  assert 'checkpoint_manager.py' in orbax_only
  return [line for line in log.splitlines()
          if (m := re.match(r'I\d{4} \S+ +\d+ (\S+\.py):\d+\]', line)) and m[1] in orbax_only]


def test_preemption_of_two_processes_and_sigkill_then_rerun_end_bit_identical(tmp_path):
  """Two runs of the same command and global batch on 2 devices, each interrupted then rerun: one
  process with 2 devices started by launch/local.sh and killed with SIGKILL at a random step; and
  the same as 2 processes (jax.distributed on 127.0.0.1, gloo collectives, 1 device each), whose
  process 0 gets SIGTERM (one preempted host).

  SIGTERM: both processes stop at the step they are at, save it collectively and exit 0, so
  nothing is lost. SIGKILL loses at most the steps since the last periodic checkpoint. Rerun, each
  finishes the 11 steps; each process decodes its half of every global batch, both print the same
  metrics, and the two runs end with parameters, BN statistics and metrics bit-identical (a 2-way
  all-reduce is one addition, so even the rounding agrees; they were interrupted at different
  steps, and an interrupted run equals an uninterrupted one in
  test_digits_train_evaluate_resume_and_export). The single-process log holds no Orbax INFO line
  (`artifact.quiet_orbax_info_logs`).
  """
  overrides = [*TINY_OVERRIDES, '--config.train.num_epochs=0.5',
               '--config.train.checkpoint_every_steps=3', '--config.train.log_every_steps=1']
  root = os.path.dirname(HERE)
  two_devices = {**os.environ, 'JAX_PLATFORMS': 'cpu',
                 'XLA_FLAGS': conftest.xla_flags('--xla_force_host_platform_device_count=2'),
                 'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']}
  local = lambda log: _start_logged(['bash', 'launch/local.sh', 'configs/quickstart.py',
                                     str(tmp_path / 'killed'), *overrides], log, env=two_devices)
  workdir = str(tmp_path / 'distributed')

  def start_two(logs):
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      port = s.getsockname()[1]
    return [subprocess.Popen(
        [sys.executable, '-m', 'dsop_jax.main', '--config=configs/quickstart.py',
         f'--workdir={workdir}', *overrides, f'--coordinator_address=127.0.0.1:{port}',
         '--num_processes=2', f'--process_id={i}', '--cpu_collectives=gloo'], cwd=root,
        stdout=open(logs[i], 'w'), stderr=subprocess.STDOUT,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'}) for i in range(2)]

  first = [tmp_path / f'first{i}.txt' for i in range(2)]
  processes = start_two(first)
  killed_run, kill_log = local(tmp_path / 'kill.txt')
  kill_after = random.Random().randint(1, 9)
  # As they come: SIGTERM reaches process 0 after its 2nd step, SIGKILL the single process after
  # `kill_after` steps.
  events = [(processes[0], first[0], 2, signal.SIGTERM), (killed_run, kill_log, kill_after,
                                                          signal.SIGKILL)]
  deadline = time.time() + 300
  while events:
    for entry in list(events):
      process, log_path, steps_done, signum = entry
      log = open(log_path).read()
      assert process.poll() is None and time.time() < deadline, log[-3000:]
      if log.count('train/loss=') >= steps_done:
        process.send_signal(signum)
        events.remove(entry)
    time.sleep(0.05)
  assert [p.wait(timeout=300) for p in processes] == [0, 0]
  stopped = [int(open(f).read().split('Preempted (SIGTERM) at step ')[1].split(';')[0])
             for f in first]
  assert stopped[0] == stopped[1] < 11
  assert checkpointing.Checkpointer(workdir).latest_step() == stopped[0]  # Nothing lost.
  assert killed_run.wait(timeout=120) == -signal.SIGKILL
  logged = open(kill_log).read().count('train/loss=')
  killed = checkpointing.Checkpointer(str(tmp_path / 'killed')).latest_step() or 0
  # Periodic checkpoints only; a save in progress at the kill may be lost, nothing before it.
  assert killed % 3 == 0 and logged - 3 <= killed <= logged, (kill_after, logged, killed)

  second = [tmp_path / f'second{i}.txt' for i in range(2)]
  processes = start_two(second)
  rerun = local(tmp_path / 'kill_rerun.txt')
  assert [p.wait(timeout=300) for p in processes] == [0, 0]
  _succeeds(*rerun)
  logs = [open(f).read() for f in second]
  for i, log in enumerate(logs):
    assert f'JAX process {i}/2, 1 local / 2 global devices' in log
    assert f'Resuming from step {stopped[0]}' in log
  evals = [[line.split('): ', 1)[1] for line in log.splitlines() if 'Eval at step 11' in line]
           for log in logs]
  assert evals[0] and evals[0] == evals[1]
  rerun_log = open(tmp_path / 'kill_rerun.txt').read()
  assert f'Resuming from step {killed}' in rerun_log or (killed == 0 and 'Resuming' not in rerun_log)
  assert _orbax_info_lines(rerun_log) == []
  untimed = lambda records: [{k: v for k, v in r.items() if k not in ('time', 'train_seconds')}  # noqa: E731
                             for r in records]
  assert untimed(_metrics(workdir)) == untimed(_metrics(tmp_path / 'killed'))
  assert [r['step'] for r in _metrics(workdir)] == [11]
  config = runs.workdir_config(workdir)
  for name in ('distributed', 'killed'):
    assert checkpointing.Checkpointer(str(tmp_path / name)).latest_step() == 11
  for a, b in zip(_leaves(restoring.restore_variables(config, workdir)),
                  _leaves(restoring.restore_variables(config, str(tmp_path / 'killed')))):
    np.testing.assert_array_equal(a, b, err_msg=f'SIGKILL after step {kill_after}')


def test_bfloat16_mixed_precision_trains_with_float32_parameters(tmp_path):
  config = train_helpers.tiny_digits_config(num_epochs=2 / 22)
  config.model.dtype = 'bfloat16'
  state = train.train_and_evaluate(config, str(tmp_path))
  assert {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats))} == {
      jnp.dtype(jnp.float32)}
  (record,) = _metrics(tmp_path)
  assert all(np.isfinite(m['loss']) for m in record['eval'].values())


def test_knowledge_distillation_from_a_teacher_inside_the_step(tmp_path):
  """Table II's distillation baselines: the teacher's logits are computed in the jitted step and
  the loss is Hinton's formula; a teacher given as an export or as a workdir trains end to end."""
  teacher_config = train_helpers.tiny_digits_config('none', num_epochs=2 / 22)
  train.train_and_evaluate(teacher_config, str(tmp_path / 'teacher'))
  exported = export.export(str(tmp_path / 'teacher'), str(tmp_path / 'teacher_export'))
  teacher, teacher_variables = artifact.load(exported)

  config = train_helpers.tiny_digits_config('none', num_epochs=2 / 22)
  config.distill.update(teacher=exported, temperature=2.0, soft_weight=0.7)
  model = registry.create(config.model)
  tx = optax.sgd(0.1)
  state = steps.init_state(model, tx, config, sharding.create_mesh())
  batch = next(input_pipeline.eval_batches(config, local_batch_size=64))
  info = datasets.dataset_info(config)
  batch['image'] = steps.normalise_images(jnp.asarray(batch['image']), info.mean, info.std)
  step = jax.jit(steps.make_train_step(
      losses.distillation_objective(model, teacher, temperature=2.0, soft_weight=0.7), tx))
  _, metrics = step(state, batch, jax.random.key(0), teacher_variables)
  student_logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                               batch['image'], train=True, mutable=['batch_stats'])[0]['logits']
  expected, parts = losses.distillation_loss(
      student_logits=student_logits, labels=batch['label'], temperature=2.0, soft_weight=0.7,
      teacher_logits=teacher.apply(teacher_variables, batch['image'], train=False)[0])
  assert float(metrics['loss']) == pytest.approx(float(expected), rel=1e-5)
  assert float(metrics['distill_soft']) == pytest.approx(float(parts['soft']), rel=1e-5)
  assert float(parts['soft']) > 0

  # End to end, the teacher given as a training workdir.
  config.distill.teacher = str(tmp_path / 'teacher')
  state = train.train_and_evaluate(config, str(tmp_path / 'student'))
  assert int(state.step) == 2
  (record,) = _metrics(tmp_path / 'student')
  assert np.isfinite(record['eval']['logits']['loss'])

  with_branches = train_helpers.tiny_digits_config()
  with_branches.distill.teacher = exported
  with pytest.raises(ValueError, match='distill.teacher is set but the model has branches'):
    train.train_and_evaluate(with_branches, str(tmp_path / 'refused'))
  config.loss.mixup_alpha = 0.2
  with pytest.raises(ValueError, match='mixup_alpha / cutmix_alpha are set with config.distill'):
    train.train_and_evaluate(config, str(tmp_path / 'refused'))
  config.loss.mixup_alpha = 0.0
  config.distill.teacher = str(tmp_path / 'nowhere')
  with pytest.raises(ValueError, match=r"config.distill.teacher = '.*nowhere' is invalid"):
    train.train_and_evaluate(config, str(tmp_path / 'refused'))
  # A teacher for another label set: an export of a freshly initialised 5-class network.
  other = train_helpers.tiny_digits_config()
  other.model.num_classes = 5
  config.distill.teacher = train_helpers.write_fresh_export(other.model,
                                                            str(tmp_path / 'five_classes'))
  with pytest.raises(ValueError, match=r"five_classes' has 5 classes; the student has 10"):
    train.train_and_evaluate(config, str(tmp_path / 'refused'))
  assert not os.path.exists(tmp_path / 'refused' / 'checkpoints')
