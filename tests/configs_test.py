"""Every config in configs/ builds its model and runs one forward pass at a tiny input size.

Variables are built abstractly (jax.eval_shape of the real init) and filled with small random values,
which skips initialising the 33M-weight branch classifiers of the ImageNet configs on the CPU.
"""

import functools
import glob
import importlib
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsop_jax.models import registry
from dsop_jax.tools import complexity
from dsop_jax.training import losses
from dsop_jax.training import optim
from dsop_jax.training import steps

# Every config file but the schema (common.py: every field's default, which the bases complete).
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(os.path.dirname(__file__), '..', 'configs', '*.py'))
    if not p.endswith(('__init__.py', 'common.py')))


def test_config_directory_is_not_empty():
  assert len(CONFIGS) >= 12, CONFIGS


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_and_runs_forward(name):
  """At full depth abstractly (every layer's variables and every head's output shape, nothing
  computed: XLA's CPU compilation of a 164-layer forward alone took 10-24 s per config), and one
  real forward of the same config on one block per stage and branch, every width kept."""
  config = importlib.import_module(f'dsop_jax.configs.{name}').get_config()
  size = 32 if config.data.image_size >= 224 else 8
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  abstract_init = lambda model: jax.eval_shape(  # noqa: E731
      lambda x: model.init(jax.random.key(0), x, train=False), x)
  model = registry.create(config.model)
  abstract = abstract_init(model)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), abstract, x)
  heads = losses.head_logits(out)
  assert sorted(heads) == sorted(registry.head_names(config.model))
  for logits in heads.values():
    assert logits.shape == (2, config.model.num_classes) and logits.dtype == jnp.float32
  # Every block of the full-depth backbone has its variables (ResNet-164: 54 blocks).
  specs = registry.create_backbone(config.model).stage_specs()
  blocks = [k for k in abstract['params']['backbone'] if re.fullmatch(r'stage\d+_block\d+', k)]
  assert len(blocks) == sum(s.num_blocks for s in specs) > len(specs), (name, blocks)

  config = _one_block_per_stage_and_branch(config)
  model = registry.create(config.model)
  abstract = abstract_init(model)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(
      lambda a: jnp.asarray(rng.standard_normal(a.shape, np.float32) * 0.02, a.dtype), abstract)
  variables['batch_stats'] = jax.tree.map(jnp.abs, variables['batch_stats'])
  images = jnp.asarray(np.random.default_rng(0).normal(size=x.shape), jnp.float32)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  heads = losses.head_logits(out)
  assert sorted(heads) == sorted(registry.head_names(config.model))
  for logits in heads.values():
    assert logits.shape == (2, config.model.num_classes)
    assert bool(jnp.all(jnp.isfinite(logits)))
  total, _ = losses.dsop_loss(outputs=out, labels=jnp.zeros(2, jnp.int32),
                              weights=registry.loss_weights(config))
  assert bool(jnp.isfinite(total))


def test_imagenet_variants():
  r50 = importlib.import_module('dsop_jax.configs.imagenet_r50')
  assert r50.get_config().model.last_stride == 1
  config = r50.get_config('s2,plain')
  assert config.model.last_stride == 2 and config.model.branches.blocks == (0, 0, 0, 0)
  assert registry.branch_specs(config.model) == []
  with pytest.raises(ValueError, match=r"config argument option 's3' is invalid: allowed: s2, plain"):
    r50.get_config('s3')
  gap = r50.get_config('gap')  # Table VII: GAP, no reduction layer in any branch.
  assert gap.model.branches.pool == 'gap' and gap.model.branches.channels == (256, 512, 1024, 2048)
  assert all(b['pooled_dim'] == c for b, c in zip(
      complexity.report(gap)['branches'].values(), (256, 512, 1024, 2048)))
  early = r50.get_config('early45')
  assert (early.train.policy, early.train.remove_branches_at_epoch) == ('early_removal', 45.0)
  r18 = importlib.import_module('dsop_jax.configs.imagenet_r18')
  for option, params in (('ch64', 32.7), ('ch128', 51.3)):  # Table VIII's #Param (M).
    assert complexity.report(r18.get_config(option))['params_train'] / 1e6 == pytest.approx(
        params, rel=0.003)
  assert r18.get_config('blocks=8-0-0-0').model.branches.blocks == (8, 0, 0, 0)  # Table X.
  radam = r18.get_config('plain,radam').optim  # Table IX(b): RAdam's official ImageNet recipe.
  assert (radam.name, radam.learning_rate, radam.weight_decay, radam.decay_epochs,
          radam.decay_factor) == ('radam', 0.003, 1e-4, (31, 61), 0.1)
  adahessian = r18.get_config('adahessian').optim
  assert (adahessian.name, adahessian.learning_rate, adahessian.decay_epochs) == (
      'adahessian', 0.15, (30, 60))
  two_phase = r50.get_config('two_phase').train  # Table III: 15 epochs on a trained backbone.
  assert (two_phase.policy, two_phase.num_epochs, two_phase.backbone_checkpoint) == (
      'two_phase', 15.0, '')
  for bad in ('blocks=8-0-0', 'blocks=a-0-0-0', 'early50'):
    with pytest.raises(ValueError, match=f"option '{bad}' is invalid: allowed: .*blocks=A-B-C-D"):
      r18.get_config(bad)


def test_cifar_variants():
  wrn = importlib.import_module('dsop_jax.configs.cifar_wrn28_10')
  config = wrn.get_config('cifar10,plain')
  assert config.model.num_classes == 10 and config.model.branches.pattern == ''
  assert config.optim.decay_epochs == (60, 120, 160) and config.optim.decay_factor == 0.2
  assert len(registry.branch_specs(wrn.get_config('cifar100').model)) == 6
  # One grammar for every config: options by name, refused with every allowed one named.
  with pytest.raises(ValueError, match=r"option 'dsop' is invalid: allowed: cifar10, cifar100, "
                                       r"plain, original\.$"):
    wrn.get_config('cifar10,dsop')
  with pytest.raises(ValueError, match=r"option 'adahessian' is invalid"):
    wrn.get_config('cifar10,adahessian')  # Table IX uses AdaHessian with ResNet-20 only.
  assert wrn.get_config('plain,cifar10').model.num_classes == 10  # In any order.
  resnet20 = importlib.import_module('dsop_jax.configs.cifar_resnet20')
  config = resnet20.get_config('cifar10,plain,adahessian')
  assert config.model.branches.pattern == '' and config.optim.name == 'adahessian'
  assert (config.train.batch_size, config.train.num_epochs, config.optim.learning_rate,
          config.optim.decay_epochs) == (256, 160.0, 0.15, (79, 119))
  assert resnet20.get_config('cifar10').optim.name == 'sgd'
  config = resnet20.get_config('cifar10,radam')  # Table IX(a): RAdam's official CIFAR recipe.
  assert (config.train.batch_size, config.train.num_epochs, config.optim.name,
          config.optim.learning_rate, config.optim.weight_decay, config.optim.decay_epochs) == (
              128, 164.0, 'radam', 0.003, 1e-4, (81, 122))
  with pytest.raises(ValueError, match="option 'foo' is invalid: this config takes no options"):
    importlib.import_module('dsop_jax.configs.quickstart').get_config('foo')
  with pytest.raises(ValueError, match="'adahessian' and 'radam' are two optimisers"):
    resnet20.get_config('cifar10,adahessian,radam')


EXPERIMENTS = os.path.join(os.path.dirname(__file__), '..', 'docs', 'EXPERIMENTS.md')
_COMMAND = re.compile(r'`--config=configs/(\w+)\.py(?::([^`\s]*))?((?: --config\.[\w.]+=[^`\s]+)*)`')


def _table_rows():
  """(table heading, row text) of every row of every result table in docs/EXPERIMENTS.md: the
  table lines after a header's '|---' line."""
  rows, heading, in_table = [], None, False
  for line in open(EXPERIMENTS).read().splitlines():
    if line.startswith('## '):
      heading = line[3:]
    in_table = line.startswith('|') and (in_table or line.startswith('|---'))
    if in_table and not line.startswith('|---'):
      rows.append((heading, line))
  return rows


def test_every_row_of_the_experiments_page_names_commands_that_build():
  """Each row of docs/EXPERIMENTS.md gives at least one `--config=configs/NAME.py:OPTIONS` command
  (plus `--config.FIELD=VALUE` overrides); each builds its model, loss weights and optimiser, and
  the page covers every result table the paper ran (II, III, V-XI, Section V-C)."""
  rows = _table_rows()
  headings = {h.split(':')[0] for h, _ in rows}
  assert headings == {'Table II', 'Table III and Section V-C', 'Tables V and VI', 'Table VII',
                      'Table VIII', 'Table IX', 'Table X', 'Table XI', 'Section V-C'}, headings
  built = set()
  for heading, row in rows:
    commands = _COMMAND.findall(row)
    assert commands, f'{heading}: no command in {row}'
    assert row.rstrip(' |').split('|')[-1].strip().startswith('runs'), row
    for name, variant, overrides in commands:
      config = importlib.import_module(f'dsop_jax.configs.{name}').get_config(variant or '')
      for override in overrides.split():
        field, value = override[len('--config.'):].split('=', 1)
        assert value == 'DIR', override  # Only directories the user supplies, then set below.
        config.update_from_flattened_dict({field: '/a/trained/run'})
      registry.validate_model_config(config.model)
      registry.validate_loss_config(config)
      optim.validate_optim_config(config)
      registry.create(config.model)
      built.add((name, variant))
  assert (len(rows), len(built)) == (63, 72)


def _one_block_per_stage_and_branch(config):
  """The config's network with every width, pooling, reduction and head, on one block per backbone
  stage and per branch (a CIFAR stage pattern becomes '[1]': a one-block branch after each stage's
  one block), and 10 classes: ImageNet's 1000 would make the classifiers of the pooled
  second-order features (32,896 x 1000 for a 256-channel covariance) most of the work, while their
  shapes are checked at full size by complexity_test."""
  config.model.num_classes = min(config.model.num_classes, 10)
  num_stages = len(registry.create_backbone(config.model).stage_specs())
  config.model.stage_sizes = (1,) * num_stages
  if config.model.branches.pattern:
    config.model.branches.pattern = '[1]'
  config.model.branches.blocks = tuple(min(b, 1) for b in config.model.branches.blocks)
  return config


# The deep networks of the paper's tables, each with every width, pooling, reduction, head and its
# optimiser, on one block per backbone stage and per branch: real initialisation, a compiled
# training step and an eval step (at full depth they take a forward pass above). One network per
# family whose training no other test covers; the others train elsewhere at a tiny size, on the
# same code:
# - ResNet-101 on one block per stage is this ResNet-50; the iSQRT-COV head trains on ResNet-18
#   (train_test), the other PSDR rows in gsop_test;
# - WRN and ResNet-110 are pre-activation basic-block networks like ResNet-20 (train_test,
#   optim_test); ResNeXt-29 16x64d is 8x64d with twice the groups;
# - EfficientNet-b0 trains on two stages with branches, the second-order head and the config's
#   RMSProp (efficientnet_test).
DEEP = [('imagenet_r50', ''), ('imagenet_r50_gsop', 'mpn_cov,psdr=64,delta=0.5,psdr_aux'),
        ('imagenet_seresnext101', ''), ('imagenet_r18', 'gap,radam'),
        ('cifar_resnet164', 'cifar100'), ('cifar_resnext29_8x64d', 'cifar10')]
# ResNeXt-29's grouped convolutions are slow on XLA's CPU (4.6 s a step of 4 images at 32x32 even
# on one block per stage): 16x16 images, whose last feature map is still 4x4.
IMAGE_SIZE = {'cifar_resnext29_8x64d': 16}


@pytest.mark.parametrize('name, variant', DEEP)
def test_deep_config_trains_on_one_block_per_stage_and_branch(name, variant):
  config = _one_block_per_stage_and_branch(importlib.import_module(f'dsop_jax.configs.{name}').get_config(variant))
  model = registry.create(config.model)
  # One step, at the schedule's first rate: no warm-up, whose first rate is 0.
  config.optim.warmup_epochs = 0.0
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_steps=100)
  size = IMAGE_SIZE.get(name, 32)
  state = registry.jit_init(steps.state_init_fn(model, tx, size))(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.normal(size=(4, size, size, 3)), jnp.float32),
           'label': jnp.asarray([0, 1, 2, 3], jnp.int32), 'mask': jnp.asarray([1, 1, 1, 0], bool)}
  step = jax.jit(steps.make_train_step(
      losses.dsop_objective(model, registry.loss_weights(config)), tx))
  heads = registry.head_names(config.model)
  new_state, metrics = step(state, batch, jax.random.key(1))
  assert float(metrics['nonfinite']) == 0.0 and np.isfinite(float(metrics['loss']))
  assert {f'{h}/top1' for h in heads} <= set(metrics)
  assert int(new_state.step) == 1
  for (path, before), after in zip(jax.tree.leaves_with_path(state.params),
                                   jax.tree.leaves(new_state.params)):
    assert not np.array_equal(before, after), jax.tree_util.keystr(path)  # Every one trained.
  sums = jax.jit(functools.partial(steps.eval_step, heads_fn=steps.training_model_heads(model)))(
      {'params': new_state.params, 'batch_stats': new_state.batch_stats}, batch)
  assert float(sums['count']) == 3.0
  assert all(np.isfinite(float(sums[f'{h}/loss'])) for h in heads)
