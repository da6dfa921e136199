"""Fine-tuning from pretrained weights (config.model.init_from): a torchvision state dict in
safetensors trains on the digits with a fresh classifier and a held backbone (per-part rates), and
comes back out of `export --format=torchvision` unchanged; mismatched sources are refused before
anything compiles, naming the key; a dsop_jax export of another class count fills all but the
classifier."""

import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dsop_jax import export as export_cli
from dsop_jax.configs import finetune_cub
from dsop_jax.data import datasets
from dsop_jax.data import input_pipeline
from dsop_jax.deploy import artifact
from dsop_jax.deploy import torch_weights
from dsop_jax.models import registry
from dsop_jax.training import optim
from dsop_jax.training import pretrained
from dsop_jax.training import train
from tests import train_helpers
import torch_fixtures


def _digits_resnet18(**train_fields):
  """ResNet-18 on one block per stage (torchvision's names and widths) on the real digits, with a
  branch after its last stage, one training step."""
  config = train_helpers.tiny_digits_config('none', num_epochs=1 / 22, **train_fields)
  config.model.name = 'resnet18'
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.branches.blocks = (0, 0, 0, 1)
  config.model.branches.channels = (8,) * 4
  config.model.branches.reduction = ('direct',) * 4
  config.loss.betas = (0.0, 0.0, 0.0, 0.5)
  return config


def _first_blocks_of_resnet18(name='resnet18'):
  """The real torchvision network's keys and shapes (the fixture) of block 0 of each stage."""
  keys = torch_fixtures.keys_of(torch_fixtures.load(name))
  return [k for k in keys if not re.match(r'layer\d\.[1-9]', k[0])]


def test_fine_tuning_from_torchvision_weights_and_exporting_them_back(tmp_path, monkeypatch):
  keys = _first_blocks_of_resnet18()
  weights = torch_fixtures.seeded_state_dict(keys)
  source = str(tmp_path / 'imagenet_r18.safetensors')
  torch_weights.write_safetensors(source, weights)
  # A backbone rate of 0: one SGD step moves the branch and the fresh 10-class classifier only.
  config = _digits_resnet18()
  config.model.init_from = source
  config.optim.backbone_lr_scale = 0.0
  workdir = str(tmp_path / 'run')
  reads = []
  read_safetensors = torch_weights.read_safetensors
  monkeypatch.setattr(torch_weights, 'read_safetensors',
                      lambda path: reads.append(path) or read_safetensors(path))
  state = train.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  assert int(state.step) == 1
  assert reads == [source]  # Checked and loaded from one read of the file.
  backbone = jax.device_get({'params': state.params['backbone'],
                             'batch_stats': state.batch_stats['backbone']})
  assert backbone['params']['head']['kernel'].shape == (512, 10)
  assert np.abs(backbone['params']['head']['kernel']).sum() > 0

  out = str(tmp_path / 'export')
  assert not train_helpers.run_cli(export_cli.cli, ['export', f'--workdir={workdir}', f'--output_dir={out}',
                                                '--format=orbax,torchvision'])
  exported, metadata = torch_weights.read_safetensors(os.path.join(out, 'model.safetensors'))
  assert metadata['format'] == 'pt'
  want = {k: shape for k, shape, _ in keys}
  want['fc.weight'], want['fc.bias'] = [10, 512], [10]
  assert {k: list(v.shape) for k, v in exported.items()} == want
  for key, value in weights.items():
    if key.endswith(('running_mean', 'running_var')):  # BatchNorm's averages moved in the step.
      assert not np.array_equal(exported[key], value), key
    elif key.endswith('num_batches_tracked'):
      assert exported[key] == 1  # The step.
    elif not key.startswith('fc.'):  # The pretrained weights, bit for bit, through both tables.
      np.testing.assert_array_equal(exported[key], value, err_msg=key)
  with open(os.path.join(out, 'torch.json')) as f:
    setup = json.load(f)
  assert setup['library'] == 'torchvision' and setup['setup'][:2] == [
      'import torchvision', 'model = torchvision.models.resnet.ResNet('
      'torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)']


def test_sources_that_do_not_fit_are_refused_before_compiling(tmp_path, monkeypatch):
  monkeypatch.setattr(registry, 'init_variables', None)  # Nothing may compile.
  monkeypatch.setattr(jax, 'jit', None)
  weights = torch_fixtures.seeded_state_dict(_first_blocks_of_resnet18())
  cases = []
  wrong = dict(weights, **{'layer3.0.conv2.weight': np.zeros((256, 256, 1, 1), np.float32)})
  cases.append((wrong, r"key 'layer3.0.conv2.weight' has shape \[256, 256, 1, 1\], but "
                       r'config.model \(resnet18, 10 classes\) needs \[256, 256, 3, 3\]'))
  extra = dict(weights, **{'layer1.1.conv1.weight': np.zeros((64, 64, 3, 3), np.float32)})
  cases.append((extra, r"not a torchvision resnet18 state dict: missing keys \[\], unexpected "
                       r"keys \['layer1.1.conv1.weight'\]"))
  short = {k: v for k, v in weights.items() if not k.startswith('layer4.0.downsample.1')}
  cases.append((short, r"missing keys \['layer4.0.downsample.1.bias', "
                       r"'layer4.0.downsample.1.running_mean'"))
  nan = dict(weights, **{'bn1.running_var': np.full((64,), np.nan, np.float32)})
  cases.append((nan, r"'bn1.running_var' holds non-finite values \(NaN or infinity\)"))
  inf = dict(weights, **{'conv1.weight': np.where(np.arange(64 * 3 * 49).reshape(64, 3, 7, 7) == 5,
                                                  np.inf, weights['conv1.weight'])})
  cases.append((inf, r"'conv1.weight' holds non-finite values"))
  for i, (state, message) in enumerate(cases):
    path = str(tmp_path / f'{i}.safetensors')
    torch_weights.write_safetensors(path, state)
    config = _digits_resnet18()
    config.model.init_from = path
    with pytest.raises(ValueError, match=f'config.model.init_from = .*{i}.safetensors.*{message}'):
      train.train_and_evaluate(config, str(tmp_path / f'run{i}'))
  pickled = tmp_path / 'resnet18.pth'
  pickled.write_bytes(b'PK\x03\x04' + b'\x00' * 64)  # torch.save's zip archive.
  others = [(str(pickled), _digits_resnet18(), r'is not a safetensors file \(convert a PyTorch '
                                               r'.pth with safetensors.torch.save_file'),
            (str(tmp_path / 'nowhere'), _digits_resnet18(), 'no such file or directory'),
            (path, train_helpers.tiny_digits_config(),
             r"config.model.init_from is invalid for config.model.name = 'preact_resnet20': "
             'torchvision and timm weights exist for resnet18')]
  for source, config, message in others:
    config.model.init_from = source
    with pytest.raises(ValueError, match=message):
      train.train_and_evaluate(config, str(tmp_path / 'other'))
  assert not os.path.exists(tmp_path / 'other' / 'checkpoints')


def test_an_export_of_another_class_count_fills_all_but_the_classifier(tmp_path):
  imagenet = _digits_resnet18().model
  imagenet.num_classes = 1000
  source = train_helpers.write_fresh_export(imagenet, str(tmp_path / 'r18'))
  _, theirs = artifact.load(source)
  config = _digits_resnet18()
  config.model.init_from = source
  module = registry.create_backbone(config.model)
  fresh = registry.init_variables(module, jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  variables, kept = pretrained.load(config, fresh)
  assert kept == ['the classifier (10 classes)']
  np.testing.assert_array_equal(variables['params']['head']['kernel'],
                                fresh['params']['head']['kernel'])
  for collection in ('params', 'batch_stats'):
    for name in theirs[collection]:
      if name != 'head':
        for a, b in zip(jax.tree.leaves(theirs[collection][name]),
                        jax.tree.leaves(variables[collection][name])):
          np.testing.assert_array_equal(a, b)


def test_the_cub_fine_tuning_recipes_build_and_dsop_net_trains_from_torchvision_weights(tmp_path):
  """configs/finetune_cub.py: its four forms validate against (mocked) CUB-200-2011 with a
  torchvision ResNet-50 state dict as init_from; DSoP-Net, on one block per stage and per branch at
  32x32, takes a training step on it and evaluates every head."""
  source = str(tmp_path / 'imagenet_r50.safetensors')
  torch_weights.write_safetensors(source, torch_fixtures.seeded_state_dict(
      _first_blocks_of_resnet18('resnet50')))
  with tfds.testing.mock_data(num_examples=64, data_dir=datasets.MOCK_METADATA,
                              as_dataset_fn=train_helpers.birds()):
    for variant in ('', 'plain', 'plain,isqrt_cov', 'two_phase'):
      config = finetune_cub.get_config(variant)
      config.model.update(stage_sizes=(1, 1, 1, 1), init_from=source)
      config.model.branches.blocks = tuple(min(b, 1) for b in config.model.branches.blocks)
      registry.validate_model_config(config.model)
      optim.validate_optim_config(config)
      input_pipeline.validate_data_config(config)
      pretrained.validate(config)
      assert (config.data.augment, config.model.num_classes, config.optim.backbone_lr_scale) == (
          'finegrained', 200, 0.2)
      # Two-phase training takes init_from as its trained backbone.
      assert pretrained.source_of(config) == ('model.init_from', source)
    config = finetune_cub.get_config()
    config.model.update(stage_sizes=(1, 1, 1, 1), init_from=source)
    config.model.branches.blocks = (1, 1, 1, 1)
    config.data.update(image_size=32, shuffle_buffer=64)
    config.train.update(batch_size=4, num_epochs=1 / 16)  # 16 steps per epoch: one step.
    config.eval.batch_size = 32
    state = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert int(state.step) == 1
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    record = json.loads(f.readlines()[-1])
  assert set(record['eval']) == set(registry.head_names(config.model))  # PSDR's side head too.
  assert all(np.isfinite(head['loss']) for head in record['eval'].values())


def test_an_exports_classifier_is_kept_only_for_the_same_classes(tmp_path, caplog):
  """A 10-class export whose preprocessing.json names other classes than the digits' '0'..'9':
  its classifier starts fresh, logged naming the classes; named as the digits, it is kept."""
  config = _digits_resnet18()
  source = train_helpers.write_fresh_export(config.model, str(tmp_path / 'r18'))
  _, theirs = artifact.load(source)
  config.model.init_from = source
  module = registry.create_backbone(config.model)
  fresh = registry.init_variables(module, jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  for names, keep in ((['zero', 'one'] + [str(i) for i in range(2, 10)], False),
                      ([str(i) for i in range(10)], True)):
    with open(os.path.join(source, 'preprocessing.json'), 'w') as f:
      json.dump({'class_names': names}, f)
    caplog.clear()
    with caplog.at_level(logging.INFO):
      variables, kept = pretrained.load(config, fresh)
    expected = theirs if keep else fresh
    np.testing.assert_array_equal(variables['params']['head']['kernel'],
                                  expected['params']['head']['kernel'])
    assert (kept == ['the classifier (10 classes)']) != keep
    if not keep:
      assert "label 0: 'zero' there, '0' here; 1: 'one' there, '1' here" in caplog.text
    else:
      assert 'Kept the classifier' in caplog.text and 'the same classes in the same order' in caplog.text


@pytest.mark.parametrize('dtype', [ml_dtypes.bfloat16, np.float16])
def test_a_half_precision_state_dict_initialises_the_backbone_as_its_float32_values(tmp_path, dtype):
  """A bfloat16 or float16 torchvision state dict (as `model.half()` / `.bfloat16()` saves it)
  passes `pretrained.validate` and loads through config.model.init_from: the backbone's logits are
  bit-identical to those of the float32 file of the same rounded values, and within the rounding
  of the float32 original's."""
  original = torch_fixtures.seeded_state_dict(_first_blocks_of_resnet18())
  half = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in original.items()}
  config = _digits_resnet18()
  module = registry.create_backbone(config.model)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  fresh = registry.init_variables(module, jax.random.key(1), images)
  logits = {}
  for name, state in (('half', half), ('rounded', {k: np.asarray(v, np.float32) if v.dtype == dtype
                                                  else v for k, v in half.items()}),
                      ('original', original)):
    config.model.init_from = str(tmp_path / f'{name}.safetensors')
    torch_weights.write_safetensors(config.model.init_from, state)
    pretrained.validate(config)
    variables, _ = pretrained.load(config, fresh)
    logits[name] = np.asarray(module.apply(variables, images, train=False)[0])
  header, _ = torch_weights.read_safetensors_header(str(tmp_path / 'half.safetensors'))
  assert header['conv1.weight']['dtype'] == ('BF16' if dtype == ml_dtypes.bfloat16 else 'F16')
  np.testing.assert_array_equal(logits['half'], logits['rounded'])
  scale = np.abs(logits['original']).max()
  error = np.abs(logits['half'] - logits['original']).max() / scale
  assert 0 < error < (0.05 if dtype == ml_dtypes.bfloat16 else 0.01), error
  nan = dict(half, **{'fc.bias': np.full(half['fc.bias'].shape, np.nan, dtype)})
  config.model.init_from = str(tmp_path / 'nan.safetensors')
  torch_weights.write_safetensors(config.model.init_from, nan)
  with pytest.raises(ValueError, match="'fc.bias' holds non-finite values"):
    pretrained.validate(config)
