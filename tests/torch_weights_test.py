"""torch_weights: the key table against the real torchvision/timm state dicts (committed fixtures
made by tests/make_torch_fixtures.py), converted weights against torchvision's own logits, the
refusals, and the safetensors reader/writer against a file the safetensors library wrote."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dsop_jax.deploy import torch_weights
from dsop_jax.models import registry
import torch_fixtures


def _model_config(name: str, num_classes: int = 1000, **extra) -> ml_collections.ConfigDict:
  from dsop_jax.configs import common  # The schema's defaults for every other field.
  config = common.get_config()
  config.model.name = name
  config.model.num_classes = num_classes
  config.model.branches.pattern = ''
  config.model.branches.blocks = ()
  stages = {'efficientnet_b0': 7, 'resnet20': 3}.get(name, 4)
  config.model.branches.channels = (64,) * stages
  config.model.branches.reduction = ('direct',) * stages
  for key, value in extra.items():
    config.model[key] = value
  registry.validate_model_config(config.model)
  return config.model


def _zeros(model_config):
  return jax.tree.map(lambda x: np.zeros(x.shape, np.float32),
                      torch_weights.abstract_variables(model_config))


@pytest.mark.parametrize('name', list(torch_fixtures.MODELS))
def test_state_dict_keys_shapes_and_dtypes_are_the_libraries(name):
  fixture = torch_fixtures.keys_of(torch_fixtures.load(name))
  state = torch_weights.to_state_dict(_model_config(name), _zeros(_model_config(name)))
  got = [(k, list(v.shape), str(v.dtype)) for k, v in state.items()]
  assert sorted(got) == sorted(fixture)
  assert len(got) == len(fixture)


@pytest.mark.parametrize('name', torch_fixtures.WITH_LOGITS)
def test_converted_weights_give_torchvisions_logits(name):
  fixture = torch_fixtures.load(name)
  model_config = _model_config(name)
  state = torch_fixtures.seeded_state_dict(torch_fixtures.keys_of(fixture))
  variables, kept = torch_weights.from_state_dict(model_config, state, _zeros(model_config),
                                                  source='seeded')
  assert kept == []
  module = registry.create_backbone(model_config)
  images = jnp.asarray(torch_fixtures.seeded_input().transpose(0, 2, 3, 1))  # NCHW -> NHWC.
  logits = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False)[0])(variables, images))
  expected = np.asarray(fixture['logits'], np.float32)
  # Relative to the largest logit; the two images' logits differ by about 10% of it.
  assert np.abs(expected[0] - expected[1]).max() > 0.05 * np.abs(expected).max()
  np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)


def test_state_dict_round_trip_is_exact():
  model_config = _model_config('resnet18', last_stride=1)  # -s1: the same parameters.
  keys = torch_fixtures.keys_of(torch_fixtures.load('resnet18'))
  state = torch_fixtures.seeded_state_dict(keys, seed=3)
  variables, _ = torch_weights.from_state_dict(model_config, state, _zeros(model_config),
                                               source='seeded')
  back = torch_weights.to_state_dict(model_config, variables)
  assert sorted(back) == sorted(k for k, _, _ in keys)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_a_classifier_of_another_class_count_stays_fresh():
  model_config = _model_config('resnet18', num_classes=7)
  state = torch_fixtures.seeded_state_dict(torch_fixtures.keys_of(torch_fixtures.load('resnet18')))
  fresh = jax.tree.map(lambda x: np.full(x.shape, 0.5, np.float32),
                       torch_weights.abstract_variables(model_config))
  variables, kept = torch_weights.from_state_dict(model_config, state, fresh, source='seeded')
  assert kept == ['the classifier (7 classes)']
  np.testing.assert_array_equal(variables['params']['head']['kernel'], 0.5)
  np.testing.assert_array_equal(variables['params']['conv_init']['kernel'],
                                state['conv1.weight'].transpose(2, 3, 1, 0))
  assert fresh['params']['conv_init']['kernel'][0, 0, 0, 0] == 0.5  # Not modified in place.


def test_mismatched_state_dicts_are_refused_naming_the_key():
  r18 = torch_fixtures.seeded_state_dict(torch_fixtures.keys_of(torch_fixtures.load('resnet18')))
  r50 = _model_config('resnet50')
  with pytest.raises(ValueError, match=r"not a torchvision resnet50 state dict: missing keys "
                                       r"\['layer1.0.bn3.bias'.*unexpected keys \[\]"):
    torch_weights.from_state_dict(r50, r18, _zeros(r50), source='r18.safetensors')
  r18_config = _model_config('resnet18')
  wrong = dict(r18, **{'layer2.0.conv1.weight': np.zeros((128, 64, 1, 1), np.float32)})
  with pytest.raises(ValueError, match=r"r18.safetensors: key 'layer2.0.conv1.weight' has shape "
                                       r"\[128, 64, 1, 1\].*needs \[128, 64, 3, 3\]"):
    torch_weights.from_state_dict(r18_config, wrong, _zeros(r18_config), source='r18.safetensors')
  extra = dict(r18, **{'layer5.0.conv1.weight': np.zeros((1,), np.float32)})
  with pytest.raises(ValueError, match=r"unexpected keys \['layer5.0.conv1.weight'\]"):
    torch_weights.from_state_dict(r18_config, extra, _zeros(r18_config), source='x')
  cifar = _model_config('resnet20', num_classes=10)
  with pytest.raises(ValueError, match=r"config.model.name = 'resnet20'.*resnet18, resnet34"):
    torch_weights.key_table(cifar)


def test_safetensors_files_of_the_reference_library_are_read_and_ours_round_trip(tmp_path):
  tensors, metadata = torch_weights.read_safetensors(
      os.path.join(torch_fixtures.FIXTURE_DIR, 'tiny.safetensors'))  # safetensors.torch wrote it.
  assert metadata == {'format': 'pt'}
  np.testing.assert_array_equal(tensors['conv.weight'],
                                np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7)
  assert tensors['bn.num_batches_tracked'].dtype == np.int64
  assert tensors['bn.num_batches_tracked'] == 12345
  np.testing.assert_array_equal(tensors['fc.bias'], [1.5, -2.25])
  path = str(tmp_path / 'ours.safetensors')
  torch_weights.write_safetensors(path, tensors, {'source': 'test'})
  again, meta = torch_weights.read_safetensors(path)
  assert meta == {'source': 'test'} and sorted(again) == sorted(tensors)
  for key in tensors:
    np.testing.assert_array_equal(again[key], tensors[key])
    assert (again[key].dtype, again[key].shape) == (tensors[key].dtype, tensors[key].shape)
  pickled = tmp_path / 'model.pth'
  pickled.write_bytes(b'\x80\x04\x95' + b'\x00' * 64)  # What torch.save writes first.
  with pytest.raises(ValueError, match='is not a safetensors file'):
    torch_weights.read_safetensors(str(pickled))


def test_a_second_order_network_takes_the_backbone_and_keeps_its_own_head():
  model_config = _model_config('resnet18', num_classes=200)
  model_config.head.pool = 'isqrt_cov'
  module = registry.create_backbone(model_config)
  fresh = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                         jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  fresh = jax.tree.map(lambda x: np.full(x.shape, 0.5, np.float32), fresh)
  state = torch_fixtures.seeded_state_dict(torch_fixtures.keys_of(torch_fixtures.load('resnet18')))
  variables, kept = torch_weights.from_state_dict(model_config, state, fresh, source='seeded')
  assert kept == ['the second-order head (gsop)'] and 'head' not in variables['params']
  np.testing.assert_array_equal(variables['params']['gsop']['dr']['conv']['kernel'], 0.5)
  np.testing.assert_array_equal(variables['batch_stats']['stage5_block2']['bn2']['var'],
                                state['layer4.1.bn2.running_var'])
