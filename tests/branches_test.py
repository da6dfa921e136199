"""Auxiliary branches: S_a blocks, direct DR / PSDR chains (Eq. 4), pooling choice and outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsop_jax.models import branches
from dsop_jax.models import registry
from tests import conftest


@pytest.mark.parametrize('c0, target, delta, chain', [
    (2048, 256, 0.25, [1024, 256]),  # Section IV-B's example.
    (2048, 64, 0.25, [1024, 256, 64]),
    (2048, 128, 0.25, [1024, 256, 128]),
    (2048, 64, 0.5, [1024, 512, 256, 128, 64]),
    (2048, 256, 0.5, [1024, 512, 256]),
    (512, 256, 0.25, [256]),
    (256, 256, 0.25, []),
    (100, 128, 0.25, []),
])
def test_psdr_channels(c0, target, delta, chain):
  assert branches.psdr_channels(c0, target, delta) == chain


def test_psdr_delta_must_lie_in_open_unit_interval():
  with pytest.raises(ValueError, match='psdr_delta must lie in'):
    branches.psdr_channels(2048, 64, 1.0)


def _spec(**kw):
  base = dict(name='a_pds5', stage='stage5', stage_index=3, attach='stage5', num_blocks=2,
              pool_channels=8)
  base.update(kw)
  return branches.BranchSpec(**base)


def _run_branch(spec, channels=32, train=False):
  stage = [s for s in conftest.TinyResNet().stage_specs() if s.name == spec.stage][0]
  module = branches.AuxBranch(spec, stage, num_classes=5)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, channels)), jnp.float32)
  variables = module.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x,
                          train=False)
  out = module.apply(variables, x, train=train, rngs={'dropout': jax.random.key(2)},
                     mutable=['batch_stats'] if train else False)
  return (out[0] if train else out), variables


def test_direct_branch_structure_and_output():
  out, variables = _run_branch(_spec())
  assert list(out) == ['a_pds5'] and out['a_pds5'].shape == (2, 5)
  params = variables['params']
  assert sorted(params) == ['block1', 'block2', 'head']
  assert sorted(params['head']) == ['dr', 'fc']
  assert params['head']['dr']['conv']['kernel'].shape == (1, 1, 32, 8)
  assert params['head']['fc']['kernel'].shape == (8 * 9 // 2, 5)
  # S_a blocks reuse the stage's block without down-sampling or projection.
  assert sorted(params['block1']) == ['bn1', 'bn2', 'conv1', 'conv2']
  assert params['block1']['conv1']['kernel'].shape == (3, 3, 32, 32)


def test_no_reduction_when_stage_is_not_wider_than_target():
  _, variables = _run_branch(_spec(pool_channels=32))
  assert sorted(variables['params']['head']) == ['fc']
  assert variables['params']['head']['fc']['kernel'].shape == (32 * 33 // 2, 5)


def test_psdr_chain_with_side_branches():
  spec = _spec(reduction='psdr', pool_channels=2, psdr_delta=0.5)  # 32 -> 16, 8, 4, 2.
  out, variables = _run_branch(spec)
  assert sorted(out) == ['a_pds5', 'a_pds5_psdr1', 'a_pds5_psdr2', 'a_pds5_psdr3']
  params = variables['params']
  assert [params[f'psdr{i}']['conv']['kernel'].shape[-1] for i in range(1, 5)] == [16, 8, 4, 2]
  for i in range(1, 4):  # Side branches reduce directly to the target before pooling.
    assert params[f'psdr{i}_head']['dr']['conv']['kernel'].shape[-1] == 2
  assert sorted(params['head']) == ['fc']
  assert branches.side_branch_names(spec, 32) == ['a_pds5_psdr1', 'a_pds5_psdr2', 'a_pds5_psdr3']


def test_psdr_without_side_branches():
  out, variables = _run_branch(_spec(reduction='psdr', pool_channels=2, psdr_aux=False))
  assert list(out) == ['a_pds5']
  assert not any(k.endswith('_head') and k != 'head' for k in variables['params'])


def test_gap_branch_has_no_reduction():
  out, variables = _run_branch(_spec(pool='gap'))
  assert sorted(variables['params']['head']) == ['fc']
  assert variables['params']['head']['fc']['kernel'].shape == (32, 5)
  assert out['a_pds5'].shape == (2, 5)


def test_dropout_only_in_training():
  spec = _spec(dropout=0.5)
  eval_a, variables = _run_branch(spec)
  eval_b, _ = _run_branch(spec)
  np.testing.assert_array_equal(eval_a['a_pds5'], eval_b['a_pds5'])
  train_out, _ = _run_branch(spec, train=True)
  no_drop, _ = _run_branch(_spec(), train=True)
  assert not np.allclose(train_out['a_pds5'], no_drop['a_pds5'])


def test_preact_stage_adds_final_norm():
  stage = conftest.TinyPreAct().stage_specs()[0]
  spec = branches.BranchSpec(name='a_pds1_3', stage='stage1', stage_index=0, attach='stage1_block3',
                             num_blocks=1, pool_channels=4)
  module = branches.AuxBranch(spec, stage, num_classes=5)
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                             jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32))
  assert sorted(variables['params']) == ['block1', 'bn_final', 'head']


def test_layout_names_from_pattern():
  cfg = conftest.branches_config(blocks=(), pattern='[1,0,2]', channels=(4, 4, 4))
  specs = registry.layout_branches(conftest.TinyPreAct().stage_specs(), cfg)
  assert [(s.name, s.attach, s.num_blocks, s.stage_index) for s in specs] == [
      ('a_pds1_1', 'stage1_block1', 1, 0), ('a_pds1_3', 'stage1_block3', 2, 0),
      ('a_pds2_1', 'stage2_block1', 1, 1), ('a_pds2_3', 'stage2_block3', 2, 1),
      ('a_pds3_1', 'stage3_block1', 1, 2), ('a_pds3_3', 'stage3_block3', 2, 2)]
