"""Writes tests/fixtures/torch/<model>.json from the real torchvision and timm models: every
state-dict key with its shape and dtype, and for ResNet-18/50 the stock model's logits (eval mode)
for the weights of `torch_fixtures.seeded_state_dict` on `torch_fixtures.seeded_input`.

Run once, outside CI, in a scratch environment with torch, torchvision and timm (never installed
by the project):
  python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch torchvision timm numpy
  /tmp/torchenv/bin/python tests/make_torch_fixtures.py
With --check_export=DIR it instead loads a dsop_jax `--format=torchvision` export as torch.json
says and prints the largest relative difference of its logits from DIR/jax_logits.npy (computed by
dsop_jax on `seeded_input`).
"""

import argparse
import json
import os
import sys

import numpy as np
import timm  # noqa: F401  (the MODELS calls name it)
import torch
import torchvision  # noqa: F401

sys.path.insert(0, os.path.dirname(__file__))
import torch_fixtures  # noqa: E402


def make(name: str) -> None:
  model = eval(torch_fixtures.MODELS[name])  # pylint: disable=eval-used
  state = model.state_dict()
  keys = [(k, list(v.shape), str(v.dtype).replace('torch.', '')) for k, v in state.items()]
  fixture = {'made_by': f'{torch_fixtures.MODELS[name]}, torch {torch.__version__}, '
                        f'torchvision {torchvision.__version__}, timm {timm.__version__}',
             'keys': keys}
  if name in torch_fixtures.WITH_LOGITS:
    weights = torch_fixtures.seeded_state_dict(keys)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    model.eval()
    with torch.no_grad():
      logits = model(torch.from_numpy(torch_fixtures.seeded_input())).numpy()
    fixture['logits'] = logits.astype(float).round(7).tolist()
  with open(os.path.join(torch_fixtures.FIXTURE_DIR, f'{name}.json'), 'w') as f:
    json.dump(fixture, f, separators=(',', ':'))
  print(name, len(keys), 'keys')


def check_export(directory: str) -> None:
  import safetensors.torch  # noqa: F401  (torch.json's lines use it)
  with open(os.path.join(directory, 'torch.json')) as f:
    setup = json.load(f)['setup']
  scope = {}
  cwd = os.getcwd()
  os.chdir(directory)
  try:
    exec('\n'.join(setup), scope)  # pylint: disable=exec-used
  finally:
    os.chdir(cwd)
  model = scope['model'].eval()
  with torch.no_grad():
    logits = model(torch.from_numpy(torch_fixtures.seeded_input())).numpy()
  reference = np.load(os.path.join(directory, 'jax_logits.npy'))
  scale = np.abs(reference).max()
  print(json.dumps({'max_abs_diff': float(np.abs(logits - reference).max()),
                    'max_rel_diff': float(np.abs(logits - reference).max() / scale)}))


if __name__ == '__main__':
  parser = argparse.ArgumentParser()
  parser.add_argument('--check_export')
  parser.add_argument('models', nargs='*', default=list(torch_fixtures.MODELS))
  args = parser.parse_args()
  if args.check_export:
    check_export(args.check_export)
  else:
    for model_name in args.models:
      make(model_name)
