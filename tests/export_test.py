"""Detach: bit-identical main-head logits, the plain network's exact variables and parameter count."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dsop_jax import export as export_cli
from dsop_jax.configs import cifar_resnet20
from dsop_jax.configs import imagenet_r18
from dsop_jax.deploy import artifact
from dsop_jax.models import registry
from dsop_jax.training import checkpointing
from dsop_jax.training import export
from dsop_jax.training import sharding
from dsop_jax.training import steps
from dsop_jax.training import train
from tests import train_helpers


def _randomise(variables, seed):
  """Random params and BN statistics, so BN is far from the identity and every path matters."""
  leaves, treedef = jax.tree.flatten_with_path(variables)
  rng = np.random.default_rng(seed)
  out = []
  for path, leaf in leaves:
    if 'var' in jax.tree_util.keystr(path):
      out.append(jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), jnp.float32))
    else:
      out.append(leaf + jnp.asarray(rng.normal(0, 0.05, leaf.shape), jnp.float32))
  return jax.tree.unflatten(treedef, out)


def _imagenet_config():
  config = imagenet_r18.get_config()
  config.model.num_classes = 10
  config.model.last_stride = 2  # s1's stage 5 is slow on XLA's CPU; dsop_anatomy detaches s1.
  # One block per stage and per branch: every width and branch kept, a quarter of the layers to
  # run op by op below.
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.branches.blocks = (1, 1, 1, 1)
  return config, 64  # Stage 5 at 2x2.


def _cifar_psdr_config():
  config = cifar_resnet20.get_config('cifar10')
  config.model.stage_sizes = (1, 1, 1)  # One block per stage, a one-block branch after each.
  config.model.branches.pattern = '[1]'
  config.model.branches.channels = (8, 8, 8)  # Reductions on stages 2 and 3 ...
  config.model.branches.reduction = ('direct', 'psdr', 'psdr')  # ... one of them a PSDR chain.
  return config, 32


@pytest.mark.parametrize('make_config', [_imagenet_config, _cifar_psdr_config,
                                         lambda: (cifar_resnet20.get_config('cifar100'), 32)])
def test_detached_network_is_bit_identical(make_config):
  config, size = make_config()
  model, plain = registry.create(config.model), registry.create_backbone(config.model)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, size, size, 3)), jnp.float32)
  variables = _randomise(registry.init_variables(model, jax.random.key(0), x), seed=1)

  detached = export.detach(variables, [s.name for s in registry.branch_specs(config.model)])
  # The deployed network, as it is called for inference (logits only).
  deployed = jax.jit(lambda v, x: plain.apply(v, x, train=False)[0])(detached, x)
  assert not np.allclose(np.asarray(deployed), 0.0)

  # Main head of the training model in eval mode, compiled: the same program after pruning.
  main_only = jax.jit(lambda v, x: model.apply(v, x, train=False)['logits'])(variables, x)
  np.testing.assert_array_equal(np.asarray(main_only), np.asarray(deployed))

  # Every head, op by op: the main route runs exactly the same operations on the same weights.
  # On the one-block CIFAR ResNet-20 only (direct and PSDR branches): op by op, each operation of
  # each shape compiles on its own (10 s for the ResNet-18, 15 s for the full ResNet-20 with its 18
  # branches on a 2-core x86 CPU), and the detach code is the same for every backbone and depth.
  if make_config is _cifar_psdr_config:
    with jax.disable_jit():
      eager_all = model.apply(variables, x, train=False)
      eager_deployed = plain.apply(detached, x, train=False)[0]
    assert eager_all['aux_logits']
    np.testing.assert_array_equal(np.asarray(eager_all['logits']), np.asarray(eager_deployed))

  # Every head compiled as one program: XLA may fuse the main route differently where branches also
  # read a block output (the GAP reduction order changes), so only float32 rounding may differ.
  all_heads = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  np.testing.assert_allclose(np.asarray(all_heads['logits']), np.asarray(deployed), rtol=1e-5,
                             atol=1e-5 * float(np.abs(deployed).max()))

  fresh = jax.eval_shape(lambda x: plain.init(jax.random.key(0), x, train=False), x)
  artifact.check_same_structure(fresh, detached)
  assert registry.count_params(detached['params']) == registry.count_params(fresh['params'])
  assert registry.count_params(detached['params']) < registry.count_params(variables['params'])


def test_detach_refuses_non_dsop_variables_and_unknown_keys():
  with pytest.raises(ValueError, match=r"variables\['params'\] has no 'backbone' subtree"):
    export.detach({'params': {'conv_init': {}}})
  variables = {'params': {'backbone': {}, 'a_pds2': {}, 'extra': {}}}
  with pytest.raises(ValueError, match=r"holds keys \['extra'\] that are not branches"):
    export.detach(variables, ['a_pds2'])
  assert export.detach(variables) == {'params': {}}


def test_structure_mismatch_names_the_keys():
  config = imagenet_r18.get_config()
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  r18 = jax.eval_shape(lambda x: registry.create_backbone(config.model).init(
      jax.random.key(0), x, train=False), x)
  config.model.name = 'resnet34'
  r34 = jax.eval_shape(lambda x: registry.create_backbone(config.model).init(
      jax.random.key(0), x, train=False), x)
  with pytest.raises(ValueError, match=r"missing \[.*stage2_block3"):
    artifact.check_same_structure(r34, r18)


def test_overwriting_an_export_keeps_a_complete_one_at_every_moment(tmp_path, monkeypatch):
  """A run killed while the new export is written (here: Orbax's save, as `force=True` would,
  deletes its target and then the process dies) leaves the old export whole; one killed between
  the two renames leaves it aside, and the next export puts it back before replacing it."""
  config = train_helpers.tiny_digits_config(num_epochs=1 / 22, checkpoint_every_steps=1)
  workdir, out = str(tmp_path / 'work'), str(tmp_path / 'export')
  train.train_and_evaluate(config, workdir)
  export.export(workdir, out)
  _, before = artifact.load(out)
  real_save = ocp.StandardCheckpointer.save

  def killed_while_saving(self, path, *args, **kwargs):
    shutil.rmtree(path, ignore_errors=True)
    raise KeyboardInterrupt('killed')

  monkeypatch.setattr(ocp.StandardCheckpointer, 'save', killed_while_saving)
  with pytest.raises(KeyboardInterrupt):
    export.export(workdir, out, overwrite=True)
  monkeypatch.setattr(ocp.StandardCheckpointer, 'save', real_save)
  _, after = artifact.load(out)  # Still the whole old export.
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)
  # Killed between the renames: the old export is aside under OUTPUT_DIR.old-PID.
  os.rename(out, out + '.old-999999999')
  assert export.export(workdir, out, overwrite=True) == out
  assert sorted(os.listdir(tmp_path)) == ['export', 'work']
  artifact.load(out)
  # A checkpoint holding Inf (written before the step checked its new state) is never exported.
  checkpointer = checkpointing.Checkpointer(workdir)
  state, meta = checkpointer.restore(steps.abstract_initial_state(config, sharding.create_mesh()))
  stats = jax.tree.map(lambda x: x, state.batch_stats)
  stats['backbone']['bn_final']['var'] = stats['backbone']['bn_final']['var'].at[0].set(jnp.inf)
  checkpointer.save(int(state.step) + 1, state.replace(batch_stats=stats), meta)
  checkpointer.close()
  with pytest.raises(ValueError, match=r"holds non-finite values in 1 variable\(s\), e\.g\. "
                                       r"\[\"\['batch_stats'\]\['bn_final'\]\['var'\]\"\]"):
    export.export(workdir, out, overwrite=True)
  artifact.load(out)  # The previous export is untouched.


def test_export_writes_only_where_nothing_is_lost(tmp_path, capsys):
  """Export refuses, naming --output_dir, a directory holding files of the user's, an existing
  file, the workdir and a directory that holds it (with --overwrite too), and leaves each as it
  was; it writes into a new or an empty directory, and leaves alone a sibling that looks like an
  interrupted export's but holds other files."""
  config = train_helpers.tiny_digits_config(num_epochs=1 / 22, checkpoint_every_steps=1)
  workdir = str(tmp_path / 'runs' / 'work')
  train.train_and_evaluate(config, workdir)
  before = sorted(os.listdir(workdir))
  mine = tmp_path / 'mine'
  (mine / 'photos').mkdir(parents=True)
  (mine / 'thesis.txt').write_text('four years')
  (mine / 'photos' / 'a.jpg').write_bytes(b'jpeg')
  afile = tmp_path / 'notes.txt'
  afile.write_text('notes')
  for target, message in [
      (mine, r"holds files that are not an export's \(photos, thesis.txt\)"),
      (afile, 'it is an existing file'),
      (workdir, 'it is the training workdir'),
      (tmp_path / 'runs', 'it is the training workdir .* or a directory that holds it')]:
    for overwrite in (False, True):
      with pytest.raises(ValueError, match=f'--output_dir=.*{message}'):
        export.export(workdir, str(target), overwrite=overwrite)
  assert (mine / 'thesis.txt').read_text() == 'four years'
  assert (mine / 'photos' / 'a.jpg').read_bytes() == b'jpeg'
  assert afile.read_text() == 'notes' and sorted(os.listdir(workdir)) == before
  # The command line stops on the error (exit status 1), and the file is still there.
  with pytest.raises(ValueError, match='thesis.txt'):
    train_helpers.run_cli(export_cli.cli, ['export', f'--workdir={workdir}', f'--output_dir={mine}'])
  assert (mine / 'thesis.txt').exists()
  empty = tmp_path / 'empty'
  empty.mkdir()
  (tmp_path / 'empty.old-999999999').mkdir()  # Not an export's: a user's folder.
  (tmp_path / 'empty.old-999999999' / 'keep.txt').write_text('keep')
  export.export(workdir, str(empty))
  artifact.load(str(empty))
  assert (tmp_path / 'empty.old-999999999' / 'keep.txt').read_text() == 'keep'
