"""Config -> model: registry, branch layouts, loss weights, and validation errors naming the field."""

import importlib
import re

import pytest

from dsop_jax.configs import cifar_base
from dsop_jax.configs import imagenet_base
from dsop_jax.configs import imagenet_r50
from dsop_jax.models import registry


def test_imagenet_table1_branch_names():
  specs = registry.branch_specs(imagenet_base.get_config().model)
  assert [(s.name, s.attach, s.num_blocks, s.pool_channels) for s in specs] == [
      ('a_pds2', 'stage2', 2, 64), ('a_pds3', 'stage3', 2, 128), ('a_pds4', 'stage4', 2, 256),
      ('a_pds5', 'stage5', 2, 256)]


def test_table_x_layouts_drop_branches():
  config = imagenet_base.get_config()
  config.model.branches.blocks = (8, 0, 0, 8)
  assert [s.name for s in registry.branch_specs(config.model)] == ['a_pds2', 'a_pds5']


def test_cifar_pattern_gives_18_branches_for_resnet110():
  specs = registry.branch_specs(cifar_base.get_config().model)
  assert len(specs) == 18
  assert [s.name for s in specs[:6]] == [f'a_pds1_{b}' for b in (3, 6, 9, 12, 15, 18)]
  assert all(s.num_blocks == 3 and s.dropout == 0.5 for s in specs)


def test_parse_pattern():
  assert registry.parse_pattern('[0,0,3]x6') == [0, 0, 3] * 6
  assert registry.parse_pattern('[1, 0, 2]') == [1, 0, 2]


def test_loss_weights_cifar_betas_per_stage():
  weights = registry.loss_weights(cifar_base.get_config())
  assert weights['logits'] == 1.0
  assert {weights[f'a_pds{s}_18'] for s in (1, 2, 3)} == {0.1, 0.2, 0.3}
  assert weights['a_pds1_3'] == 0.1 and weights['a_pds3_9'] == 0.3
  assert len(weights) == 19


def test_loss_weights_and_heads_include_psdr_side_branches():
  config = imagenet_r50.get_config()
  assert registry.head_names(config.model) == [
      'logits', 'a_pds2', 'a_pds3', 'a_pds4', 'a_pds5_psdr1', 'a_pds5']
  assert set(registry.loss_weights(config).values()) == {1.0}


def _invalid(mutate, field, config=None):
  config = config or imagenet_base.get_config()
  mutate(config)
  with pytest.raises(ValueError, match=re.escape(f'config.{field} = ')):
    registry.validate_model_config(config.model)


@pytest.mark.parametrize('field, mutate', [
    ('model.name', lambda c: setattr(c.model, 'name', 'resnet19')),
    ('model.num_classes', lambda c: setattr(c.model, 'num_classes', 0)),
    ('model.dtype', lambda c: setattr(c.model, 'dtype', 'float16')),
    ('model.last_stride', lambda c: setattr(c.model, 'last_stride', 3)),
    ('model.branches.blocks', lambda c: setattr(c.model.branches, 'blocks', (1, 2, 3))),
    ('model.branches.blocks', lambda c: setattr(c.model.branches, 'blocks', (1, -2, 3, 4))),
    ('model.branches.pattern', lambda c: setattr(c.model.branches, 'pattern', '[0,1]')),
    ('model.branches.channels', lambda c: setattr(c.model.branches, 'channels', (64, 0, 4, 4))),
    ('model.branches.pool', lambda c: setattr(c.model.branches, 'pool', 'max')),
    ('model.branches.reduction', lambda c: setattr(c.model.branches, 'reduction', ('psdr',))),
    ('model.branches.reduction',
     lambda c: setattr(c.model.branches, 'reduction', ('direct', 'x', 'direct', 'direct'))),
    ('model.branches.psdr_delta', lambda c: setattr(c.model.branches, 'psdr_delta', 1.5)),
    ('model.branches.num_iters', lambda c: setattr(c.model.branches, 'num_iters', 0)),
    ('model.branches.dropout', lambda c: setattr(c.model.branches, 'dropout', 1.0)),
])
def test_invalid_fields_are_named(field, mutate):
  _invalid(mutate, field)


def test_stage_sizes_shorten_the_backbone_and_keep_branches_and_head():
  """`model.stage_sizes`: ResNet-50's (3, 4, 6, 3) cut to one block per stage drops exactly the 12
  later bottlenecks' parameters; the branches (3/4/6/3 S_a blocks, PSDR at a_pds5) stay as they are."""
  from dsop_jax.tools import complexity  # pylint: disable=g-import-not-at-top
  config = imagenet_r50.get_config()
  full = complexity.report(config)
  config.model.stage_sizes = (1, 1, 1, 1)
  shallow = complexity.report(config)
  assert [s.num_blocks for s in registry.create_backbone(config.model).stage_specs()] == [1] * 4
  # A later bottleneck of width w keeps 4w channels: 1x1 (4w*w) + 3x3 (9w*w) + 1x1 (w*4w) + 3 BNs.
  later = lambda w: 17 * w * w + 2 * (w + w + 4 * w)  # noqa: E731
  dropped = sum(n * later(w) for n, w in ((2, 64), (3, 128), (5, 256), (2, 512)))
  assert full['params_test'] - shallow['params_test'] == dropped
  assert full['branches'] == shallow['branches']
  assert registry.head_names(config.model) == [
      'logits', 'a_pds2', 'a_pds3', 'a_pds4', 'a_pds5_psdr1', 'a_pds5']
  efficientnet = importlib.import_module('dsop_jax.configs.imagenet_efficientnet_b0').get_config()
  efficientnet.model.stage_sizes = (1,) * 7
  assert [s.num_blocks for s in registry.create_backbone(efficientnet.model).stage_specs()] == [1] * 7


@pytest.mark.parametrize('sizes', [(1, 1, 1), (1, 0, 1, 1), (1.0, 1, 1, 1)])
def test_invalid_stage_sizes_are_named(sizes):
  config = imagenet_r50.get_config()
  config.model.stage_sizes = sizes
  with pytest.raises(ValueError, match=re.escape(
      f'config.model.stage_sizes = {sizes!r} is invalid: need 4 positive integers, one per stage '
      'of resnet50 (its own: (3, 4, 6, 3)), or () for those.')):
    registry.validate_model_config(config.model)


def test_pattern_length_must_match_stage_blocks():
  config = cifar_base.get_config()
  config.model.branches.pattern = '[0,0,3]x5'
  with pytest.raises(ValueError, match=r'expands to 15 entries but stage1 of preact_resnet110 has 18'):
    registry.validate_model_config(config.model)


def test_bad_pattern_syntax_and_blocks_plus_pattern():
  config = cifar_base.get_config()
  config.model.branches.pattern = '0,0,3'
  with pytest.raises(ValueError, match=r"config.model.branches.pattern = '0,0,3' is invalid"):
    registry.validate_model_config(config.model)
  config = imagenet_base.get_config()
  config.model.branches.pattern = '[0,2]'
  with pytest.raises(ValueError, match='set either branches.blocks or branches.pattern'):
    registry.validate_model_config(config.model)


def test_invalid_loss_weights_are_named():
  config = cifar_base.get_config()
  config.loss.betas = (0.1, 0.2)
  with pytest.raises(ValueError, match=re.escape('config.loss.betas = (0.1, 0.2) is invalid')):
    registry.validate_loss_config(config)
  config = cifar_base.get_config()
  config.loss.alpha = -1.0
  with pytest.raises(ValueError, match=re.escape('config.loss.alpha = -1.0 is invalid')):
    registry.validate_loss_config(config)


def test_unknown_dataset_argument_is_named():
  with pytest.raises(ValueError, match=r"option 'svhn' is invalid: allowed: cifar10, cifar100"):
    cifar_base.get_config('svhn')


def test_init_compiled_lighter_gives_the_variables_of_a_plain_jit():
  """`registry.init_variables` (INIT_COMPILER_OPTIONS) gives the same variables, bit for bit, as
  the default compilation, for a network with iSQRT-COV branches and its truncated-normal, normal
  and uniform initialisers (the quickstart's, one block per stage)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dsop_jax.configs import quickstart  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.model.stage_sizes, config.model.branches.pattern = (1, 1, 1), '[1]'
  model = registry.create(config.model)
  x, rng = np.zeros((1, 32, 32, 3), np.float32), jax.random.key(3)
  init = lambda r, x: model.init(r, x, train=False)  # noqa: E731
  # XLA's default compilation, whatever the suite's XLA_FLAGS (conftest.XLA_TEST_FLAGS) say (its
  # classic emitters at level 3 took 44 s to compile this on a 2-core x86 CPU, the default 7 s).
  user = {'xla_llvm_disable_expensive_passes': False, 'xla_cpu_use_fusion_emitters': True}
  default = jax.jit(init, compiler_options={**user, 'xla_backend_optimization_level': 3})(rng, x)
  lighter = registry.init_variables(model, rng, x)  # INIT_COMPILER_OPTIONS, over the suite's flags.
  assert jax.tree.structure(lighter) == jax.tree.structure(default)
  for (path, a), b in zip(jax.tree.leaves_with_path(lighter), jax.tree.leaves(default)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
