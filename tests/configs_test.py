"""Every config in configs/ builds its model and runs one forward pass at a tiny input size.

Variables are built abstractly (jax.eval_shape of the real init) and filled with small random values,
which skips initialising the 33M-weight branch classifiers of the ImageNet configs on the CPU.
"""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsop_jax import losses
from dsop_jax import models

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(os.path.dirname(__file__), '..', 'configs', '*.py')) if not p.endswith('__init__.py'))


def test_config_directory_is_not_empty():
  assert len(CONFIGS) >= 12, CONFIGS


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_and_runs_forward(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  model = models.create(config.model)
  size = 32 if config.data.image_size == 224 else 8
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, 3)), jnp.float32)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  rng = np.random.default_rng(1)
  variables = jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.normal(0, 0.02, a.shape), a.dtype), abstract)
  variables['batch_stats'] = jax.tree_util.tree_map(jnp.abs, variables['batch_stats'])
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  heads = losses.head_logits(out)
  assert sorted(heads) == sorted(models.head_names(config.model))
  for logits in heads.values():
    assert logits.shape == (2, config.model.num_classes)
    assert bool(jnp.all(jnp.isfinite(logits)))
  total, _ = losses.dsop_loss(outputs=out, labels=jnp.zeros(2, jnp.int32),
                              weights=models.loss_weights(config))
  assert bool(jnp.isfinite(total))
