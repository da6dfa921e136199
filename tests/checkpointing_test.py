"""Checkpoints that cannot be read: a half-written save left by a killed run, a finalised checkpoint
damaged afterwards, and a workdir trained with another config."""

import glob
import json
import logging
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dsop_jax.configs import common
from dsop_jax.deploy import artifact
from dsop_jax.models import registry
from dsop_jax.training import checkpointing
from dsop_jax.training import restoring
from dsop_jax.training import runs
from dsop_jax.training import sharding
from dsop_jax.training import steps
from dsop_jax.training import train
from tests import train_helpers


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def _truncate_files(directory):
  """Cuts every data file of a checkpoint to half its size, as a storage fault would."""
  files = [f for f in glob.glob(os.path.join(directory, '**'), recursive=True)
           if os.path.isfile(f) and os.path.getsize(f) > 0]
  assert files
  for path in files:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def _two_step_config():
  return train_helpers.tiny_digits_config(num_epochs=2 / 22, checkpoint_every_steps=1)


@pytest.fixture(scope='module')
def two_step_run(tmp_path_factory):
  """A workdir trained for 2 steps with checkpoints at steps 1 and 2; tests work on copies."""
  workdir = str(tmp_path_factory.mktemp('two_step') / 'work')
  train.train_and_evaluate(_two_step_config(), workdir)
  return workdir


def _copy(workdir, tmp_path):
  return shutil.copytree(workdir, str(tmp_path / 'work'))


def test_unreadable_checkpoints_are_skipped_and_the_run_ends_as_uninterrupted(tmp_path, caplog):
  config = train_helpers.tiny_digits_config()  # 6 steps, checkpoints at 3 and 6.
  workdir = str(tmp_path / 'work')
  uninterrupted = train.train_and_evaluate(config, workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  assert sorted(os.listdir(checkpoints)) == ['3', '6']
  # A save killed half way leaves Orbax's temporary directory behind ...
  os.makedirs(os.path.join(checkpoints, '9.orbax-checkpoint-tmp-1700000000'))
  with open(os.path.join(checkpoints, '9.orbax-checkpoint-tmp-1700000000', 'partial'), 'wb') as f:
    f.write(b'\0' * 100)
  # ... and the finalised step 6 loses half of each file.
  _truncate_files(os.path.join(checkpoints, '6', 'state'))

  assert checkpointing.Checkpointer(workdir).latest_step() == 6
  # Readers (export, eval) only read: step 6 is skipped, not moved, and step 3's variables come back.
  read = restoring.restore_variables(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'corrupt_checkpoints'))
  assert '6' in os.listdir(checkpoints)
  at_3, _ = checkpointing.Checkpointer(workdir, read_only=True).restore(
      steps.abstract_initial_state(config, sharding.create_mesh()), step=3)
  for a, b in zip(_leaves(read), _leaves({'params': at_3.params, 'batch_stats': at_3.batch_stats})):
    np.testing.assert_array_equal(a, b)
  nowhere = str(tmp_path / 'nowhere')  # A workdir that does not exist is not created by a reader.
  with pytest.raises(ValueError, match='No checkpoint in'):
    restoring.restore_variables(config, nowhere)
  assert not os.path.exists(nowhere)
  with caplog.at_level(logging.WARNING):
    resumed = train.train_and_evaluate(config, workdir)  # Resumes from 3, redoes 4-6.
  assert 'Checkpoint at step 6 in' in caplog.text and 'resuming from step 3' in caplog.text
  (moved,) = glob.glob(os.path.join(workdir, 'corrupt_checkpoints', '6-*'))  # Kept, not deleted.
  assert os.listdir(moved)
  assert checkpointing.Checkpointer(workdir).manager.all_steps() == [3, 6]
  for a, b in zip(_leaves(resumed), _leaves(uninterrupted)):
    np.testing.assert_array_equal(a, b)

  # Every checkpoint unreadable: the error of the latest is raised and nothing is moved.
  for step in ('3', '6'):
    _truncate_files(os.path.join(checkpoints, step, 'state'))
  with pytest.raises(ValueError, match='checkpoint at step 6 .* cannot be restored'):
    train.train_and_evaluate(config, workdir)
  assert checkpointing.Checkpointer(workdir).manager.all_steps() == [3, 6]


def _damaged_step_2_is_skipped_for_step_1(config, workdir, caplog):
  """Readers skip the damaged step 2 for step 1's values and move nothing; training moves step 2
  aside and resumes from step 1. Returns what the reader logged."""
  abstract = steps.abstract_initial_state(config, sharding.create_mesh())
  at_1, _ = checkpointing.Checkpointer(workdir, read_only=True).restore(abstract, step=1)
  with caplog.at_level(logging.WARNING):
    read = restoring.restore_variables(config, workdir)
  assert 'Checkpoint at step 2' in caplog.text
  for a, b in zip(_leaves(read), _leaves({'params': at_1.params, 'batch_stats': at_1.batch_stats})):
    np.testing.assert_array_equal(a, b)
  assert '2' in os.listdir(os.path.join(workdir, 'checkpoints'))  # A reader moves nothing.
  state, meta = checkpointing.Checkpointer(workdir).restore(abstract)
  assert int(state.step) == 1 and meta['step'] == 1
  assert glob.glob(os.path.join(workdir, 'corrupt_checkpoints', '2-*'))
  return caplog.text


def test_a_flipped_bit_in_a_checkpoints_values_is_caught_by_its_checksum(two_step_run, tmp_path,
                                                                          caplog):
  """Damage Orbax cannot see: step 2's state rewritten by Orbax itself with one bit of one weight
  flipped (a valid checkpoint with a wrong value). Orbax restores it without an error; the
  checksum saved with step 2 does not match, and the step is skipped as unreadable."""
  config, workdir = _two_step_config(), _copy(two_step_run, tmp_path)
  abstract = steps.abstract_initial_state(config, sharding.create_mesh())
  at_2, _ = checkpointing.Checkpointer(workdir, read_only=True).restore(abstract, step=2)
  kernel = np.array(at_2.params['backbone']['conv_init']['kernel'])
  kernel.view(np.uint32).flat[7] ^= 1 << 12  # One bit of the mantissa of one weight.
  params = jax.tree.map(lambda x: x, at_2.params)
  params['backbone']['conv_init']['kernel'] = jnp.asarray(kernel)
  damaged = at_2.replace(params=params)
  item = os.path.join(workdir, 'checkpoints', '2', 'state')
  with ocp.StandardCheckpointer() as writer:
    writer.save(str(tmp_path / 'rewritten'), damaged)
  shutil.rmtree(item)
  shutil.copytree(str(tmp_path / 'rewritten'), item)
  with ocp.StandardCheckpointer() as reader:  # Orbax reads it as a valid checkpoint.
    restored = reader.restore(item, abstract)
  np.testing.assert_array_equal(restored.params['backbone']['conv_init']['kernel'], kernel)
  log = _damaged_step_2_is_skipped_for_step_1(config, workdir, caplog)
  assert 'do not match the checksum' in log


def test_flipped_bytes_in_a_checkpoint_file_skip_the_step(two_step_run, tmp_path, caplog):
  """100 inverted bytes in the middle of the largest data file of the newest checkpoint: whether
  Orbax's decoder or the checksum notices first depends on where they land in the compressed
  file; either way the step is skipped for the one before."""
  config, workdir = _two_step_config(), _copy(two_step_run, tmp_path)
  data = glob.glob(os.path.join(workdir, 'checkpoints', '2', 'state', 'ocdbt.process_0', 'd', '*'))
  largest = max(data, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.seek(os.path.getsize(largest) // 2)
    flipped = bytes(b ^ 0xFF for b in f.read(100))
    f.seek(os.path.getsize(largest) // 2)
    f.write(flipped)
  _damaged_step_2_is_skipped_for_step_1(config, workdir, caplog)


def test_a_reader_racing_the_trainers_clean_up_uses_the_newer_checkpoint(two_step_run, tmp_path,
                                                                         caplog):
  """A reader lists steps 1 and 2; before it reads them a training run saves step 3 (here: step 2's
  files renamed, as a save's finalising rename does) and deletes the older ones. The reader takes
  step 3 and says what happened; with nothing newer, it says so instead of showing a read error."""
  config, workdir = _two_step_config(), _copy(two_step_run, tmp_path)
  abstract = steps.abstract_initial_state(config, sharding.create_mesh())
  reader = checkpointing.Checkpointer(workdir, read_only=True)
  assert reader.manager.all_steps() == [1, 2]
  checkpoints = os.path.join(workdir, 'checkpoints')
  os.rename(os.path.join(checkpoints, '2'), os.path.join(checkpoints, '3'))
  shutil.rmtree(os.path.join(checkpoints, '1'))
  with caplog.at_level(logging.WARNING):
    state, _ = reader.restore(abstract)
  assert int(state.step) == 2  # Step 2's values, found as step 3.
  assert 'Checkpoint at step 2 in' in caplog.text and 'was removed while being read' in caplog.text
  reader = checkpointing.Checkpointer(workdir, read_only=True)
  shutil.rmtree(os.path.join(checkpoints, '3'))
  with pytest.raises(ValueError, match=r'steps \[3\]\) was removed while being read, and no newer '
                                       r'one appeared'):
    reader.restore(abstract)


def test_resuming_with_another_model_or_optimiser_is_refused_naming_the_fields(tmp_path):
  config = train_helpers.tiny_digits_config('every')
  workdir = str(tmp_path)
  os.makedirs(os.path.join(workdir, 'checkpoints', '3'))
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort())
  runs.check_resume_config(config, workdir)  # Same config: accepted.
  config.train.num_epochs = 5.0  # Training longer is allowed.
  runs.check_resume_config(config, workdir)
  legacy = json.loads(config.to_json_best_effort())  # Written before clipping and accumulation.
  del legacy['optim']['clip_grad_norm'], legacy['train']['accumulate_steps']
  del legacy['optim']['lr_reference_batch']
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(legacy, f)
  runs.check_resume_config(config, workdir)  # They were off.
  config.model.branches.pattern = '[2]'
  config.optim.update(name='radam', clip_grad_norm=1.0)
  config.train.accumulate_steps = 2
  with pytest.raises(ValueError) as error:
    runs.check_resume_config(config, workdir)
  assert ("config.model.branches.pattern = '[2]' (checkpoints: '[1]'); "
          "config.optim.clip_grad_norm > 0 = True (checkpoints: False); "
          "config.optim.name = 'radam' (checkpoints: 'sgd'); "
          "config.train.accumulate_steps > 1 = True (checkpoints: False)") in str(error.value)
  # train_and_evaluate checks before it restores (or compiles) anything.
  with pytest.raises(ValueError, match='holds checkpoints of another model or optimiser'):
    train.train_and_evaluate(config, workdir)
  # So do the readers (eval, export, the notebooks): the fields, not a dump of mismatched shapes.
  with pytest.raises(ValueError, match=r"another model or optimiser; this config differs in: "
                                       r"config.model.branches.pattern = '\[2\]'"):
    restoring.restore_variables(config, workdir)


def test_resuming_with_other_data_or_schedule_is_refused_unless_allowed(two_step_run, tmp_path):
  """A resume that changes the batch, the data or the schedule is refused naming the fields, before
  anything is compiled or restored; config.train.allow_resume_changes lets named fields change, and the earlier
  config is kept beside the new one as config.until_step_N.json."""
  workdir = _copy(two_step_run, tmp_path)
  first = open(os.path.join(workdir, 'config.json')).read()
  changed = train_helpers.tiny_digits_config(num_epochs=3 / 22, checkpoint_every_steps=1)
  changed.train.batch_size = 32
  changed.data.shuffle_buffer = 100
  changed.optim.learning_rate = 0.05
  with pytest.raises(ValueError, match=r"was trained with other data or another schedule; this "
                     r"config differs in: config.data.shuffle_buffer = 100 \(checkpoints: 1437\); "
                     r"config.optim.learning_rate = 0.05 \(checkpoints: 0.1\); "
                     r"config.train.batch_size = 32 \(checkpoints: 64\)\. .* allow the change "
                     r"with --config.train.allow_resume_changes=data.shuffle_buffer,"
                     r"optim.learning_rate,train.batch_size\."):
    train.train_and_evaluate(changed, workdir)
  assert open(os.path.join(workdir, 'config.json')).read() == first
  changed.train.allow_resume_changes = 'data.shuffle_buffer, optim.learning_rate'
  with pytest.raises(ValueError, match=r'differs in: config.train.batch_size = 32'):
    train.train_and_evaluate(changed, workdir)
  changed.train.batch_size = 64
  changed.train.allow_resume_changes = 'train.batch_sise'
  with pytest.raises(ValueError, match=r'allow_resume_changes names config.train.batch_sise, which '
                                       r'a resume does not check; allowed: .*train.batch_size'):
    train.train_and_evaluate(changed, workdir)
  changed.optim.learning_rate = 0.1  # (A rate baked into the step would compile another one.)
  changed.train.allow_resume_changes = 'data.shuffle_buffer'
  state = train.train_and_evaluate(changed, workdir)  # Resumes at step 2, ends at 3.
  assert int(state.step) == 3
  assert open(os.path.join(workdir, 'config.until_step_2.json')).read() == first
  assert runs.workdir_config(workdir).data.shuffle_buffer == 100
  # A cosine schedule's length is num_epochs: training longer changes it, so it is checked too.
  cosine = train_helpers.tiny_digits_config()
  cosine.optim.schedule = 'cosine'
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(cosine.to_json_best_effort())
  cosine.train.num_epochs = 5.0
  with pytest.raises(ValueError, match=r'config.train.num_epochs = 5.0 \(checkpoints: 0.25\)'):
    runs.check_resume_config(cosine, workdir)
  # Another training subset (config.data.train_subset_seed) is other data.
  cosine.train.num_epochs = 0.25
  cosine.data.train_subset_seed = 2
  with pytest.raises(ValueError, match=r'differs in: config.data.train_subset_seed = 2 '
                                       r'\(checkpoints: 0\)\.'):
    runs.check_resume_config(cosine, workdir)


def test_a_workdir_from_before_the_newer_model_fields_resumes(tmp_path):
  """A config.json written before `model.stage_sizes` and `model.head` existed builds the same
  network as today's defaults: resuming it is accepted, and a changed value is still refused."""
  config = train_helpers.tiny_imagenet_config()
  config.model.stage_sizes = ()  # The network's own, as an old config.json built it.
  os.makedirs(tmp_path / 'checkpoints' / '3')
  old = json.loads(config.to_json_best_effort())
  del old['model']['stage_sizes'], old['model']['head']
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(old, f)
  runs.check_resume_config(config, str(tmp_path))
  config.model.head.channels = 8  # Builds nothing with the first-order (gap) head.
  runs.check_resume_config(config, str(tmp_path))
  config.model.stage_sizes = (1, 1, 1, 1)
  with pytest.raises(ValueError, match=r'config.model.stage_sizes = \[1, 1, 1, 1\] \(checkpoints: '
                     r'\[\]\)'):
    runs.check_resume_config(config, str(tmp_path))


# Fields added to the schema after the first workdirs were written (configs/common.py gives each
# the default that does what those runs did).
NEWER_FIELDS = {'model': ('stage_sizes', 'head', 'last_stride', 'bn_group_size', 'init_from'),
                'loss': ('mixup_alpha', 'cutmix_alpha', 'label_smoothing'),
                'data': ('train_subset', 'train_subset_seed', 'fit', 'train_split', 'eval_split',
                         'augment', 'mean', 'std', 'inception_crop', 'process_split'),
                'train': ('accumulate_steps', 'keep_best', 'async_checkpointing', 'tensorboard',
                          'profile_steps', 'allow_resume_changes', 'checkpoint_every_epoch',
                          'on_nonfinite', 'max_consecutive_skips'),
                'optim': ('ema_decay', 'clip_grad_norm', 'lr_reference_batch',
                          'backbone_lr_scale', 'decay_every_epochs', 'rms_decay')}


def test_a_workdir_and_an_export_written_before_the_newer_fields_resume_evaluate_and_export(
    two_step_run, tmp_path):
  """config.json without the fields added since (and without config.distill), and an export's
  model_config.json without the newer model fields, are brought up to the schema in one step
  (`config_files.upgrade`): the run resumes, evaluates and exports, and the export loads; a field
  the schema does not have is refused by name."""
  workdir = _copy(two_step_run, tmp_path)
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  defaults = json.loads(common.get_config().to_json_best_effort())
  for section, fields in NEWER_FIELDS.items():  # Those a run from before them could have had.
    for field in fields:
      if saved[section][field] == defaults[section][field]:
        del saved[section][field]
  assert sum(len(v) for v in saved.values()) < 40  # Most newer fields were at their defaults.
  del saved['distill']
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(saved, f)
  upgraded = runs.workdir_config(workdir)
  assert upgraded.model.head.pool == 'gap' and upgraded.train.accumulate_steps == 1
  assert upgraded.distill.teacher == '' and upgraded.data.train_subset_seed == 0
  config = _two_step_config()
  config.train.num_epochs = 3 / 22
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(saved, f)
  state = train.train_and_evaluate(config, workdir)  # Resumed at step 2.
  assert int(state.step) == 3
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(saved, f)  # What train wrote is the full schema: put the old file back.
  metrics = train.evaluate_checkpoint(runs.workdir_config(workdir), workdir)
  assert 0 <= metrics['logits']['top1'] <= 1
  from dsop_jax.training import export  # pylint: disable=g-import-not-at-top
  out = export.export(workdir, str(tmp_path / 'export'))
  with open(os.path.join(out, 'model_config.json')) as f:
    model_config = json.load(f)
  for field in NEWER_FIELDS['model']:
    if model_config[field] == defaults['model'][field]:
      del model_config[field]
  assert 'head' not in model_config and 'last_stride' not in model_config
  with open(os.path.join(out, 'model_config.json'), 'w') as f:
    json.dump(model_config, f)
  module, variables = artifact.load(out)
  assert registry.count_params(variables['params']) > 0 and module is not None
  saved['optim']['momentum_typo'] = 0.9
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(saved, f)
  with pytest.raises(ValueError, match=r'work/config.json: config.optim.momentum_typo is not a field '
                                       r'of dsop_jax configs'):
    runs.workdir_config(workdir)
  model_config['num_classes'] = 'ten'
  with open(os.path.join(out, 'model_config.json'), 'w') as f:
    json.dump(model_config, f)
  with pytest.raises(ValueError, match=r"model_config.json: config.model.num_classes = 'ten' is "
                                       r'invalid: the field holds int values'):
    artifact.load(out)


def test_no_config_default_is_restated_in_the_package():
  """Library code reads `config.x.field`: a `config.x.get('field', default)` would restate a
  default of configs/common.py (the one source), which `config_files.upgrade` makes needless."""
  pattern = re.compile(r"\b(?:config|model_config|[cdmot])(?:\.(?:model|data|train|optim|loss|eval|"
                       r"distill|head|branches))*\.get\(")
  package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'dsop_jax')
  found = []
  for folder, _, files in os.walk(package):
    for name in files:
      if name.endswith('.py'):
        with open(os.path.join(folder, name)) as f:
          found += [f'{name}:{i + 1}: {line.strip()}' for i, line in enumerate(f)
                    if pattern.search(line)]
  assert not found, found


def test_export_of_a_workdir_without_config_or_checkpoint_or_with_a_damaged_config_is_refused(tmp_path):
  from dsop_jax.training import export  # pylint: disable=g-import-not-at-top
  workdir, out = str(tmp_path / 'work'), str(tmp_path / 'export')
  os.makedirs(workdir)
  with pytest.raises(ValueError, match='holds no config.json: not a dsop_jax training workdir'):
    export.export(workdir, out)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(train_helpers.tiny_digits_config().to_json_best_effort())
  with pytest.raises(ValueError, match='No checkpoint in .*checkpoints'):
    export.export(workdir, out)
  assert not os.path.exists(os.path.join(out, 'model_config.json'))
  # A config.json cut short (or edited into invalid JSON): named, with how to recover.
  text = train_helpers.tiny_digits_config().to_json_best_effort()
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(text[:len(text) // 2])
  for reader in (lambda: export.export(workdir, out), lambda: runs.workdir_config(workdir),
                 lambda: runs.check_resume_config(train_helpers.tiny_digits_config(), workdir)):
    with pytest.raises(ValueError, match=r'work/config.json is not a valid config file \(.*\): it '
                                         r'was damaged or edited by hand. Restore it'):
      reader()


def test_the_best_evaluated_checkpoint_is_kept_beside_the_last_ones(tmp_path):
  """keep_best: the last N and the checkpoint saved with the best main-head top-1, which a new
  Checkpointer (a restarted run, a reader) still finds; without it only the last N are kept."""
  top1 = {2: 0.5, 4: 0.9, 6: 0.7}  # Evaluated steps; the others are periodic saves.
  for keep_best, kept, async_saves in ((True, [4, 6, 7], False), (False, [6, 7], False),
                                       (True, [4, 6, 7], True)):
    workdir = str(tmp_path / f'{keep_best}{async_saves}')
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=2, keep_best=keep_best,
                                              async_saves=async_saves)
    with pytest.raises(ValueError, match=r'No checkpoint in .* was saved with an evaluation .*'
                                         r'config.train.keep_best=True'):
      checkpointer.best_step()
    for step in range(1, 7):
      checkpointer.save(step, {'w': np.full(3, step, np.float32)}, {'step': step}, top1.get(step))
    checkpointer.close()
    restarted = checkpointing.Checkpointer(workdir, max_to_keep=2, keep_best=keep_best)
    restarted.save(7, {'w': np.full(3, 7, np.float32)}, {'step': 7})
    assert restarted.steps() == kept
    assert restarted.best_step() == (4 if keep_best else 6)  # The best of those kept.
    state, meta = checkpointing.Checkpointer(workdir, read_only=True).restore(
        {'w': np.zeros(3, np.float32)}, step=restarted.best_step())
    assert meta['step'] == restarted.best_step() and state['w'][0] == restarted.best_step()
