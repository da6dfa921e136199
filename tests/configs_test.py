"""Every config in configs/ builds its model and runs one forward pass at a tiny input size.

Variables are built abstractly (jax.eval_shape of the real init) and filled with small random values,
which skips initialising the 33M-weight branch classifiers of the ImageNet configs on the CPU.
"""

import functools
import glob
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsop_jax import complexity
from dsop_jax import losses
from dsop_jax import models
from dsop_jax import optim
from dsop_jax import train

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


def test_imagenet_variants():
  r50 = importlib.import_module('configs.imagenet_r50')
  assert r50.get_config().model.last_stride == 1
  config = r50.get_config('s2,plain')
  assert config.model.last_stride == 2 and config.model.branches.blocks == (0, 0, 0, 0)
  assert models.branch_specs(config.model) == []
  with pytest.raises(ValueError, match=r"config argument option 's3' is invalid: allowed: s2, plain"):
    r50.get_config('s3')
  gap = r50.get_config('gap')  # Table VII: GAP, no reduction layer in any branch.
  assert gap.model.branches.pool == 'gap' and gap.model.branches.channels == (256, 512, 1024, 2048)
  assert all(b['pooled_dim'] == c for b, c in zip(
      complexity.report(gap)['branches'].values(), (256, 512, 1024, 2048)))
  early = r50.get_config('early45')
  assert (early.train.policy, early.train.remove_branches_at_epoch) == ('early_removal', 45.0)
  r18 = importlib.import_module('configs.imagenet_r18')
  for option, params in (('ch64', 32.7), ('ch128', 51.3)):  # Table VIII's #Param (M).
    assert complexity.report(r18.get_config(option))['params_train'] / 1e6 == pytest.approx(
        params, rel=0.003)
  assert r18.get_config('blocks=8-0-0-0').model.branches.blocks == (8, 0, 0, 0)  # Table X.
  for bad in ('blocks=8-0-0', 'blocks=a-0-0-0', 'early50'):
    with pytest.raises(ValueError, match=f"option '{bad}' is invalid: allowed: .*blocks=A-B-C-D"):
      r18.get_config(bad)


def test_cifar_variants():
  wrn = importlib.import_module('configs.cifar_wrn28_10')
  config = wrn.get_config('cifar10,plain')
  assert config.model.num_classes == 10 and config.model.branches.pattern == ''
  assert config.optim.decay_epochs == (60, 120, 160) and config.optim.decay_factor == 0.2
  assert len(models.branch_specs(wrn.get_config('cifar100').model)) == 6
  with pytest.raises(ValueError, match=r"config argument \(dataset\) = 'cifar10,dsop' is invalid"):
    wrn.get_config('cifar10,dsop')
  with pytest.raises(ValueError, match=r"'cifar10,adahessian' is invalid: .* followed by ',plain'\.$"):
    wrn.get_config('cifar10,adahessian')  # Table IX uses AdaHessian with ResNet-20 only.
  resnet20 = importlib.import_module('configs.cifar_resnet20')
  config = resnet20.get_config('cifar10,plain,adahessian')
  assert config.model.branches.pattern == '' and config.optim.name == 'adahessian'
  assert (config.train.batch_size, config.train.num_epochs, config.optim.learning_rate,
          config.optim.decay_epochs) == (256, 160.0, 0.15, (80, 120))
  assert resnet20.get_config('cifar10').optim.name == 'sgd'


# ImageNet-size networks whose real training step is too costly to compile on CI's CPU; their code
# paths train end to end on the tiny ResNet-18 (train_test). Here the configs' own networks go
# through one whole training step and one evaluation step under abstract evaluation.
DEEP = [('imagenet_r34', ''), ('imagenet_r50', ''), ('imagenet_r50', 'gap'),
        ('imagenet_r50_gsop', ''), ('imagenet_r50_gsop', 'mpn_cov,psdr=64,delta=0.5,psdr_aux'),
        ('imagenet_r101', ''), ('imagenet_seresnext101', ''), ('imagenet_efficientnet_b0', ''),
        ('imagenet_efficientnet_b0', 'plain,isqrt_cov')]


@pytest.mark.parametrize('name, variant', DEEP)
def test_deep_config_takes_a_training_and_an_eval_step_abstractly(name, variant):
  config = importlib.import_module(f'configs.{name}').get_config(variant)
  model = models.create(config.model)
  tx = optim.create_optimizer(config, steps_per_epoch=10, num_steps=100)
  state = jax.eval_shape(train.state_init_fn(model, tx, 32), jax.random.PRNGKey(0))
  batch = {'image': jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
           'label': jax.ShapeDtypeStruct((2,), jnp.int32),
           'mask': jax.ShapeDtypeStruct((2,), jnp.bool_)}
  step = functools.partial(train.train_step, model=model, tx=tx,
                           loss_weights=models.loss_weights(config))
  new_state, metrics = jax.eval_shape(step, state, batch, jax.random.PRNGKey(0))
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
  heads = models.head_names(config.model)
  assert {'loss', 'nonfinite'} | {f'{h}/top1' for h in heads} <= set(metrics)
  sums = jax.eval_shape(functools.partial(
      train.eval_step, heads_fn=train.training_model_heads(model)),
                        {'params': state.params, 'batch_stats': state.batch_stats}, batch)
  assert {f'{h}/loss' for h in heads} <= set(sums)
