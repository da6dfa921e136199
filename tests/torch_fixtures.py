"""Seeded PyTorch-layout weights and inputs, the same in tests/make_torch_fixtures.py (run once
with torch, torchvision and timm installed, outside CI) and in the tests that read its fixtures
(NumPy only)."""

import json
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), 'fixtures', 'torch')
# dsop_jax model name -> the library call the fixture was made from; the ResNets' fixtures also
# hold the stock model's logits for `seeded_state_dict` and `seeded_input`.
MODELS = {'resnet18': 'torchvision.models.resnet18()', 'resnet34': 'torchvision.models.resnet34()',
          'resnet50': 'torchvision.models.resnet50()', 'resnet101': 'torchvision.models.resnet101()',
          'resnet152': 'torchvision.models.resnet152()',
          'seresnext101_32x4d': "timm.create_model('seresnext101_32x4d')",
          'efficientnet_b0': "timm.create_model('efficientnet_b0')"}
WITH_LOGITS = ('resnet18', 'resnet50')
INPUT_SHAPE = (2, 3, 64, 64)  # NCHW, as PyTorch takes it.


def seeded_state_dict(keys: Sequence[Tuple[str, Sequence[int], str]], seed: int = 0
                      ) -> Dict[str, np.ndarray]:
  """Weights for every (key, shape, dtype) of a state dict, from one NumPy RNG, scaled so a deep
  network's activations stay of order one and its logits depend on the input (fan-in normal
  kernels, BatchNorm gains near 1, running variances in [0.5, 1.5], small shifts: ResNet-50's
  logits then differ by 12% between the two images of `seeded_input`, and by 12% when every
  kernel is transposed in H and W)."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape, dtype in keys:
    shape = tuple(shape)
    if dtype == 'int64':
      state[key] = np.zeros(shape, np.int64)
      continue
    leaf = key.rsplit('.', 1)[-1]
    if leaf == 'running_var':
      value = rng.uniform(0.5, 1.5, shape)
    elif leaf in ('running_mean', 'bias'):
      value = rng.normal(0.0, 0.01, shape)
    elif len(shape) == 1:  # A BatchNorm gain.
      value = rng.uniform(0.8, 1.2, shape)
    else:
      value = rng.normal(0.0, 1.0, shape) / np.sqrt(np.prod(shape[1:]))
    state[key] = value.astype(np.float32)
  return state


def seeded_input(seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).normal(0.0, 1.0, INPUT_SHAPE).astype(np.float32)


def load(name: str) -> Dict[str, Any]:
  with open(os.path.join(FIXTURE_DIR, f'{name}.json')) as f:
    return json.load(f)


def keys_of(fixture: Dict[str, Any]) -> List[Tuple[str, List[int], str]]:
  return [tuple(entry) for entry in fixture['keys']]
