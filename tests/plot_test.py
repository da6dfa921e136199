"""Curves and summary tables: the CLI renders a PNG from real tiny runs on the digits; the figure's
lines and the table's numbers are the metrics.jsonl values; damaged or missing input is refused."""

import json
import os
import subprocess
import sys

from matplotlib import image as mpl_image
import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf

from dsop_jax import predict as predict_cli
from dsop_jax.data import datasets
from dsop_jax.data import input_pipeline
from dsop_jax.deploy import artifact
from dsop_jax.deploy import predict
from dsop_jax.models import registry
from dsop_jax.tools import gradients
from dsop_jax.tools import plot
from dsop_jax.training import checkpointing
from dsop_jax.training import export
from dsop_jax.training import losses
from dsop_jax.training import restoring
from dsop_jax.training import runs as runs_lib
from dsop_jax.training import steps
from dsop_jax.training import train
from tests import train_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DSOP_HEADS = ['logits', 'a_pds1_1', 'a_pds2_1', 'a_pds3_1']  # A branch after each stage's one block.


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A DSoP run and a plain run on the real digits: 6 steps, an evaluation every 2 steps."""
  base = tmp_path_factory.mktemp('runs')
  workdirs = []
  for name, branches in (('dsop', 'every'), ('plain', 'none')):
    # The DSoP run keeps its last checkpoint and its best evaluated one (evaluations at 2, 4, 6).
    config = train_helpers.tiny_digits_config(branches, checkpoint_every_steps=6, keep_checkpoints=1,
                                              keep_best=name == 'dsop')
    config.train.eval_every_epochs = 2 / 22  # 22 steps per epoch.
    train.train_and_evaluate(config, str(base / name))
    workdirs.append(str(base / name))
  return workdirs


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_cli_renders_png_and_table_from_real_runs(runs, tmp_path):
  output, table_path = tmp_path / 'curves.png', tmp_path / 'table.md'
  result = subprocess.run(
      [sys.executable, '-m', 'dsop_jax.plot', f'--workdir={runs[0]}', f'--workdir={runs[1]}',
       f'--output={output}', f'--table={table_path}'],
      cwd=ROOT, capture_output=True, text=True, check=True)
  image = mpl_image.imread(str(output))
  # Two rows (main heads of both runs; every head of the DSoP run; the plain run has one head),
  # 12 x 8 inches at 100 dpi.
  assert image.shape[:2] == (800, 1200)
  assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50  # Not a blank canvas.
  table = table_path.read_text()
  assert table.strip() in result.stdout
  rows = table.split('\n\n')[0].splitlines()[2:]
  assert len(rows) == 5  # 4 DSoP heads + the plain main head.
  final = _records(runs[0])[-1]
  assert final['step'] == 6
  main = final['eval']['logits']
  assert (f"| preact_resnet20 + DSoP (3 branches) | main (first-order) | {round(final['epoch'], 2):g} | "
          f"{100 * (1 - main['top1']):.2f} | {100 * (1 - main['top5']):.2f} |") in rows[0]
  assert rows[4].startswith('| preact_resnet20 (plain) | main (first-order) |')


def test_figure_lines_are_the_recorded_errors(runs):
  loaded = plot.load_runs(runs)
  assert [r.label for r in loaded] == ['preact_resnet20 + DSoP (3 branches)',
                                       'preact_resnet20 (plain)']
  assert loaded[0].heads == DSOP_HEADS and loaded[1].heads == ['logits']
  records = _records(runs[0])
  assert [r['step'] for r in records] == [2, 4, 6]
  fig = plot.figure(loaded)
  compare_top1, _, heads_top1, heads_top5 = fig.axes
  plain_records = _records(runs[1])
  for line, recs in zip(compare_top1.lines, (records, plain_records)):
    np.testing.assert_allclose(line.get_xdata(), [r['epoch'] for r in recs])
    np.testing.assert_allclose(line.get_ydata(), [100 * (1 - r['eval']['logits']['top1'])
                                                  for r in recs])
  assert [line.get_label() for line in heads_top5.lines] == ['main (first-order)'] + DSOP_HEADS[1:]
  for line, head in zip(heads_top5.lines, DSOP_HEADS):
    np.testing.assert_allclose(line.get_ydata(), [100 * (1 - r['eval'][head]['top5'])
                                                  for r in records])
  assert len(heads_top1.lines) == 4
  one = plot.figure(loaded[:1])  # One run: its heads only, no comparison row.
  assert len(one.axes) == 2 and len(one.axes[0].lines) == 4


def test_runs_of_one_configuration_are_summarised_over_seeds(runs, tmp_path):
  """Copies of the DSoP run as seeds 1 and 2 with other final errors: the seeds table gives the
  mean and sample standard deviation of the main head's final top-1 error per configuration."""
  assert plot.seeds_table(plot.load_runs(runs)) == ''  # No configuration repeats.
  copies = []
  for seed, top1 in ((1, 0.9), (2, 0.8)):
    copy = tmp_path / f'seed{seed}'
    os.makedirs(copy)
    config = runs_lib.workdir_config(runs[0])
    config.train.seed = seed
    with open(copy / 'config.json', 'w') as f:
      f.write(config.to_json())
    records = _records(runs[0])
    records[-1]['eval']['logits']['top1'] = top1
    with open(copy / 'metrics.jsonl', 'w') as f:
      f.write('\n'.join(json.dumps(r) for r in records) + '\n')
    copies.append(str(copy))
  table = plot.render([*copies, runs[1]], str(tmp_path / 'seeds.png'))
  assert ('| preact_resnet20 + DSoP (3 branches) | 2 | 15.00 +- 7.07 | 1: 10.00, 2: 20.00 |'
          in table)
  plain = 100 * (1 - _records(runs[1])[-1]['eval']['logits']['top1'])
  assert f'| preact_resnet20 (plain) | 1 | {plain:.2f} | 0: {plain:.2f} |' in table


def test_plain_and_dsop_runs_pair_by_subset_and_seed(runs, tmp_path):
  """Copies of the plain and the DSoP run as training subsets 0-1 x seeds 1-2, with chosen final
  errors and training times: each pair's gain, the per-subset means, the paired mean gain with its
  95% t-interval (t quantile for 3 degrees of freedom, 3.182446305284263, from a table), DSoP-Net's
  time over plain's, and the pairs figure (one line per pair, from plain's error to DSoP's)."""
  errors = {(0, 1): (12.0, 11.0), (0, 2): (11.0, 11.5), (1, 1): (13.0, 11.0), (1, 2): (12.5, 12.0)}
  workdirs = []
  for (subset, seed), pair in errors.items():
    for source, error, seconds in zip((runs[1], runs[0]), pair, (60.0, 150.0)):
      copy = tmp_path / f'{os.path.basename(source)}_subset{subset}_seed{seed}'
      os.makedirs(copy)
      config = runs_lib.workdir_config(source)
      config.train.seed, config.data.train_subset_seed = seed, subset
      (copy / 'config.json').write_text(config.to_json())
      records = _records(source)
      records[-1]['eval']['logits']['top1'] = 1 - error / 100
      records[-1]['train_seconds'] = seconds
      (copy / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
      workdirs.append(str(copy))
  table = plot.render(workdirs, str(tmp_path / 'curves.png'),
                      pairs_output=str(tmp_path / 'pairs.png'))
  for row in ('| 0 | 1 | 12.00 | 11.00 | +1.00 | 1.0 | 2.5 |', '| 0 | 2 | 11.00 | 11.50 | -0.50 |',
              '| 1 | 1 | 13.00 | 11.00 | +2.00 |', '| 1 | 2 | 12.50 | 12.00 | +0.50 |',
              '| 0 | 2 | +0.25 |', '| 1 | 2 | +1.25 |'):
    assert row in table
  assert '| 0/1: 12.00, 0/2: 11.00, 1/1: 13.00, 1/2: 12.50 |' in table  # Subset/seed: plain err.
  gains = np.array([1.0, -0.5, 2.0, 0.5])
  half = 3.182446305284263 * gains.std(ddof=1) / 2
  assert (f'Paired mean gain over 4 pairs: +0.75 points, standard deviation '
          f'{gains.std(ddof=1):.2f}, 95% t-interval [{0.75 - half:+.2f}, {0.75 + half:+.2f}]; '
          "DSoP-Net ahead in 3 of 4 pairs; DSoP-Net's training time over plain's: 2.50x.") in table
  fig = plot.pairs_figure(plot.load_runs(workdirs))
  each, curves = fig.axes
  np.testing.assert_allclose([line.get_ydata() for line in each.lines[:4]], list(errors.values()))
  # The mean curves (plain: 12.125% at the end; DSoP: 11.375%), framed on the last 3 evaluations.
  assert len(curves.lines) == 2
  np.testing.assert_allclose([line.get_ydata()[-1] for line in curves.lines], [12.125, 11.375])
  epochs = curves.lines[0].get_xdata()
  pad = 0.1 * (epochs[-1] - epochs[-3])
  assert curves.get_xlim() == pytest.approx((epochs[-3] - pad, epochs[-1] + pad))
  assert each.get_xlabel() == ''
  assert curves.get_ylim()[0] < 11.375 and curves.get_ylim()[1] > 12.125
  assert mpl_image.imread(str(tmp_path / 'pairs.png')).shape[:2] == (450, 1200)
  with pytest.raises(ValueError, match='--pairs_output: the runs hold no finished plain and DSoP'):
    plot.pairs_figure(plot.load_runs(workdirs[1::2]))  # DSoP runs only.


def _copy(source, workdir, seed, subset=0, error=None, edit=None, records=None):
  """A copy of the run in `source` as seed `seed` of training subset `subset`, its config edited
  by `edit(config)`, its last main-head error set to `error` (%), its records replaced."""
  os.makedirs(workdir)
  config = runs_lib.workdir_config(source)
  config.train.seed, config.data.train_subset_seed = seed, subset
  if edit:
    edit(config)
  (workdir / 'config.json').write_text(config.to_json())
  records = records or _records(source)
  if error is not None:
    records[-1]['eval']['logits']['top1'] = 1 - error / 100
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  return str(workdir)


def test_runs_that_differ_in_more_than_branches_give_no_gain(runs, tmp_path):
  """Plain runs of 20 epochs against DSoP runs of 10 (other data, an other learning rate): no
  paired gain and no pairs figure, the fields named; the seeds table keeps each configuration
  apart and names what differs. Fields that change no result (where the data lies, how often to
  log) do not stop a comparison."""
  def other(field, value):
    return lambda config: config.update_from_flattened_dict({field: value})
  for field, value in (('train.num_epochs', 20.0), ('optim.learning_rate', 0.01),
                       ('data.train_subset', 700)):
    base = tmp_path / field
    workdirs = [_copy(runs[1], base / f'plain{seed}', seed, edit=other(field, value))
                for seed in (1, 2)] + [_copy(runs[0], base / f'dsop{seed}', seed) for seed in (1, 2)]
    loaded = plot.load_runs(workdirs)
    table = plot.paired_table(loaded)
    assert table.startswith('No paired gains: the plain and the DSoP runs differ in more than their '
                            f'branches: {field} = {value!r} (plain)'), table
    with pytest.raises(ValueError, match=f'--pairs_output: .*{field}'):
      plot.pairs_figure(loaded)
  # Plain runs of two epoch counts: two configurations, each named by what sets it apart; the
  # three configurations give no paired table.
  workdirs = [_copy(runs[1], tmp_path / f'epochs{e}', 1, edit=other('train.num_epochs', e))
              for e in (0.25, 20.0)] + [_copy(runs[0], tmp_path / 'dsop', 1)]
  table = plot.render(workdirs, str(tmp_path / 'c.png'))
  assert '| preact_resnet20 (plain) [train.num_epochs=20.0] |' in table
  assert '| preact_resnet20 (plain) [train.num_epochs=0.25] |' in table
  assert 'gain' not in table
  free = [_copy(runs[1], tmp_path / 'free_plain', 1,
                edit=other('data.data_dir', '/elsewhere/digits')),
          _copy(runs[0], tmp_path / 'free_dsop', 1, edit=other('train.log_every_steps', 7))]
  assert [(p.workdir, d.workdir) for p, d in plot.pairs(plot.load_runs(free))] == [tuple(free)]


def test_unfinished_and_repeated_runs_are_not_paired(runs, tmp_path):
  """A pair whose DSoP run stopped before the end of training is left out of the gains and named;
  the same run given twice is refused."""
  workdirs = [_copy(runs[1], tmp_path / 'plain1', 1, error=12.0),
              _copy(runs[0], tmp_path / 'dsop1', 1, error=11.0),
              _copy(runs[1], tmp_path / 'plain2', 2, error=12.0),
              _copy(runs[0], tmp_path / 'dsop2', 2, error=5.0, records=_records(runs[0])[:2])]
  loaded = plot.load_runs(workdirs)
  assert [run.finished for run in loaded] == [True, True, True, False]
  assert [(p.seed, d.seed) for p, d in plot.pairs(loaded)] == [(1, 1)]
  table = plot.paired_table(loaded)
  assert 'Paired mean gain over 1 pair: +1.00 points' in table
  assert table.endswith(f'Left out, not finished (rerun the command to resume them): '
                        f'{workdirs[3]} (step 4 of 6).')
  with pytest.raises(ValueError, match='are both the plain run of subset 0, seed 1: give each run '
                                       'once'):
    plot.pairs(plot.load_runs(workdirs[:2] + [_copy(runs[1], tmp_path / 'again', 1)]))


def _write(path, lines):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    f.write('\n'.join(lines))


def _line(step, top1, epoch=None):
  return json.dumps({'step': step, 'epoch': step / 10 if epoch is None else epoch,
                     'eval': {'logits': {'top1': top1, 'top5': 1.0, 'loss': 0.1}}})


def test_read_metrics_keeps_the_last_record_of_a_step_and_skips_a_torn_last_line(tmp_path):
  # A run evaluated step 20, was killed before saving, resumed from step 10 and evaluated step 20
  # again; then it was killed while writing.
  _write(tmp_path, [_line(10, 0.5), _line(20, 0.6), _line(20, 0.7), _line(30, 0.8)[:25]])
  records = plot.read_metrics(str(tmp_path))
  assert [(r['step'], r['eval']['logits']['top1']) for r in records] == [(10, 0.5), (20, 0.7)]
  run = plot.Run(str(tmp_path), 'x', records)
  assert run.curve('logits', 'top1') == ((1.0, 2.0), (50.0, pytest.approx(30.0)))


def test_torn_last_lines_are_repaired_before_a_resumed_run_appends(tmp_path, caplog):
  """Killed while writing -> resumed -> killed just before the newline -> resumed -> plot: every
  record a run finished is read, the torn text is kept aside, and the file stays whole lines."""
  workdir = str(tmp_path)
  runs_lib.append_metrics(workdir, json.loads(_line(10, 0.5)))
  with open(tmp_path / 'metrics.jsonl', 'a') as f:  # Killed mid-record at step 20.
    f.write(_line(20, 0.6)[:25])
  with caplog.at_level('WARNING'):
    runs_lib.append_metrics(workdir, json.loads(_line(20, 0.7)))  # Resumed: step 20 again.
  assert 'incomplete record' in caplog.text
  with open(tmp_path / 'metrics.jsonl', 'a') as f:  # Killed after the record, before its newline.
    f.write(_line(30, 0.8))
  runs_lib.append_metrics(workdir, json.loads(_line(40, 0.9)))  # Resumed again.
  records = plot.read_metrics(workdir)
  assert [(r['step'], r['eval']['logits']['top1']) for r in records] == [
      (10, 0.5), (20, 0.7), (30, 0.8), (40, 0.9)]
  assert all(json.loads(line) for line in open(tmp_path / 'metrics.jsonl'))
  assert open(tmp_path / 'metrics.jsonl.torn').read() == _line(20, 0.6)[:25] + '\n'


def test_labels_of_second_order_networks():
  from dsop_jax.configs import imagenet_r50_gsop  # pylint: disable=g-import-not-at-top
  assert plot.config_label(imagenet_r50_gsop.get_config('psdr=64,delta=0.5,psdr_aux')) == (
      'resnet50 + isqrt_cov head (psdr to 64)')  # Its 4 PSDR side branches are not DSoP branches.
  config = imagenet_r50_gsop.get_config('mpn_cov')
  config.model.branches.blocks = (3, 0, 0, 0)
  assert plot.config_label(config) == 'resnet50 + mpn_cov head (direct to 256) + DSoP (1 branch)'
  assert plot.Run('w', 'x', [], main_order=2).head_label('logits') == 'main (second-order)'
  assert plot.Run('w', 'x', []).head_label('a_pds2') == 'a_pds2'


@pytest.mark.parametrize('lines, match', [
    ([_line(10, 0.5)[:20], _line(20, 0.6)], 'line 1, is not an evaluation record'),
    (['{"step": 1, "epoch": 0.1}', _line(20, 0.6)], "line 1, is not an evaluation record .*'eval'"),
    ([_line(10, 'high'), _line(20, 0.6)], 'line 1, is not an evaluation record'),
    ([], 'holds no evaluation yet'),
])
def test_read_metrics_refuses_damaged_files(tmp_path, lines, match):
  _write(tmp_path, lines)
  with pytest.raises(ValueError, match=match):
    plot.read_metrics(str(tmp_path))


def test_bad_arguments_name_the_flag(tmp_path, runs):
  with pytest.raises(ValueError, match=r"--workdir='.*nothing' holds no metrics.jsonl"):
    plot.read_metrics(str(tmp_path / 'nothing'))
  with pytest.raises(ValueError, match=r"--output='.*curves.txt'.*allowed: .*png"):
    plot.render(runs, str(tmp_path / 'curves.txt'))
  with pytest.raises(ValueError, match='--label: got 1 labels for 2 workdirs'):
    plot.render(runs, str(tmp_path / 'curves.png'), labels=['only one'])
  with pytest.raises(ValueError, match='--pairs_output=.* is --output'):
    plot.render(runs, str(tmp_path / 'curves.png'), pairs_output=str(tmp_path / '.' / 'curves.png'))
  assert not os.path.exists(tmp_path / 'curves.png')
  table = plot.render(runs, str(tmp_path / 'out' / 'curves.svg'), labels=['DSoP', 'plain'])
  assert os.path.getsize(tmp_path / 'out' / 'curves.svg') > 0
  assert '| DSoP | a_pds3_1 |' in table and '| plain | main (first-order) |' in table


def test_head_gradients_add_up_to_eq1s_and_follow_eq2(runs):
  """The per-head backbone gradients of the trained DSoP run sum to the gradient of the whole
  Eq. 1 loss, and a branch sends nothing into the stages after it (Eq. 2)."""
  config = runs_lib.workdir_config(runs[0])
  model, weights = registry.create(config.model), registry.loss_weights(config)
  variables = restoring.restore_variables(config, runs[0])
  batch = next(input_pipeline.train_batches(config, local_batch_size=32, start_step=0, seed=0))
  info = datasets.dataset_info(config)
  batch = {**batch, 'image': steps.normalise_images(batch['image'], info.mean, info.std)}
  rng = jax.random.key(3)
  per_head = gradients.head_gradients(model, weights, variables, [batch], rng)
  objective = losses.dsop_objective(model, weights)
  whole = jax.jit(jax.grad(lambda p: objective(p, variables['batch_stats'], batch,
                                               jax.random.fold_in(rng, 0))[0]))(variables['params'])
  summed = jax.tree.map(lambda *g: sum(g), *per_head.values())
  for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(whole['backbone'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # Leaves of about 1e-2.

  result = gradients.measure(config, runs[0], num_batches=1, batch_size=32)
  assert result['parts'] == ['conv_init', 'stage1', 'stage2', 'stage3', 'bn_final', 'head']
  heads = result['heads']
  after = {'a_pds1_1': ('stage2', 'stage3', 'bn_final', 'head'),
           'a_pds2_1': ('stage3', 'bn_final', 'head'), 'a_pds3_1': ('bn_final', 'head')}
  for head, parts in after.items():
    assert heads[head]['weight'] == weights[head]
    for p in result['parts']:
      assert (heads[head]['norm'][p] == 0) == (p in parts), (head, p)
      assert (heads[head]['cosine_with_main'][p] is None) == (p in parts), (head, p)
  assert all(n > 0 for n in heads['logits']['norm'].values())
  assert heads['logits']['cosine_with_main']['stage1'] == pytest.approx(1.0)
  table = gradients.format_table(result)
  assert 'a_pds1_1' in table and table.count('stage3') == 2


def test_keep_best_keeps_and_exports_the_best_evaluated_step(runs, tmp_path):
  top1 = {r['step']: r['eval']['logits']['top1'] for r in _records(runs[0])}
  best = max((v, step) for step, v in top1.items())[1]  # The latest of equals.
  assert sorted(top1) == [2, 4, 6]
  assert checkpointing.Checkpointer(runs[0], read_only=True).steps() == sorted({best, 6})
  assert checkpointing.Checkpointer(runs[1], read_only=True).steps() == [6]
  config = runs_lib.workdir_config(runs[0])
  out = export.export(runs[0], str(tmp_path / 'best'), best=True)
  _, exported = artifact.load(out)
  at_best = export.detach(restoring.restore_variables(config, runs[0], step=best))
  for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(at_best)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r"has no checkpoint of step 5; it has steps \["):
    restoring.restore_variables(config, runs[0], step=5)
  # Without keep_best the final checkpoint, evaluated too, is the best one there is.
  assert checkpointing.Checkpointer(runs[1], read_only=True).best_step() == 6


_STABLEHLO_ALONE = """
import sys
import numpy as np
from jax import export
with open(sys.argv[1], 'rb') as f:
  exported = export.deserialize(bytearray(f.read()))
np.save(sys.argv[3], np.asarray(exported.call(np.load(sys.argv[2]))))
assert not [m for m in sys.modules if m.split('.')[0] in ('dsop_jax', 'flax')], sorted(sys.modules)
"""


def test_export_formats_and_predict_on_images(runs, tmp_path, capsys):
  """The export's preprocessing.json and model card; its StableHLO module run by a process that
  imports neither dsop_jax nor flax; its ONNX model run by onnxruntime; predict on PNG files (and
  damaged ones) from the three forms, with the evaluation's input and the trained main head's
  probabilities."""
  out = export.export(runs[0], str(tmp_path / 'export'), formats=['orbax', 'stablehlo', 'onnx'])
  with open(os.path.join(out, 'preprocessing.json')) as f:
    recipe = json.load(f)
  assert recipe['input_size'] == [32, 32] and recipe['grey'] and recipe['channel_order'] == 'RGB'
  assert recipe['class_names'] == [str(i) for i in range(10)]
  with open(os.path.join(out, 'model_card.json')) as f:
    card = json.load(f)
  module, variables = artifact.load(out)
  assert card['params'] == registry.count_params(variables['params']) and card['step'] == 6
  assert card['main_head_eval_top1'] == _records(runs[0])[-1]['eval']['logits']['top1']
  assert card['architecture'] == 'preact_resnet20' and card['xla_gflops_per_image'] > 0

  config = runs_lib.workdir_config(runs[0])
  batch = next(input_pipeline.eval_batches(config, local_batch_size=120))
  info = datasets.dataset_info(config)
  images = np.asarray(steps.normalise_images(jnp.asarray(batch['image'][:3]), info.mean, info.std))
  logits = np.asarray(jax.jit(lambda x: module.apply(variables, x, train=False)[0])(images))
  np.save(tmp_path / 'images.npy', images)
  subprocess.run([sys.executable, '-c', _STABLEHLO_ALONE, os.path.join(out, 'model.stablehlo'),
                  str(tmp_path / 'images.npy'), str(tmp_path / 'logits.npy')], check=True,
                 cwd=str(tmp_path))
  np.testing.assert_allclose(np.load(tmp_path / 'logits.npy'), logits, rtol=1e-4, atol=1e-5)
  session = onnxruntime.InferenceSession(os.path.join(out, 'model.onnx'),
                                         providers=['CPUExecutionProvider'])
  np.testing.assert_allclose(session.run(None, {'images': np.asarray(images)})[0], logits,
                             rtol=1e-4, atol=1e-5)

  # The first three test images as PNG files, a truncated PNG and a text file named like one.
  raw = datasets._full_arrays(config)['test'][0][:3]
  folder = tmp_path / 'photos'
  folder.mkdir()
  for i, image in enumerate(raw):
    (folder / f'{i}.png').write_bytes(tf.io.encode_png(image).numpy())
  (folder / 'cut.png').write_bytes((folder / '0.png').read_bytes()[:60])
  (folder / 'notes.png').write_text('not an image')
  for i, image in enumerate(raw):  # The evaluation's own input.
    np.testing.assert_allclose(predict.prepare_image(image, recipe), images[i], atol=1e-6)
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  for fmt in ('orbax', 'stablehlo', 'onnx'):
    results, errors = predict.predict(out, predict.image_paths([str(folder)]), 3, fmt)
    assert [os.path.basename(r['path']) for r in results] == ['0.png', '1.png', '2.png']
    assert len(errors) == 2 and 'cut.png: not a readable image' in errors[0]
    assert 'notes.png: not a readable image' in errors[1]
    for result, probabilities in zip(results, expected):
      top = np.argsort(-probabilities)[:3]
      assert [t['index'] for t in result['top']] == list(top)
      assert [t['class'] for t in result['top']] == [str(i) for i in top]
      np.testing.assert_allclose([t['probability'] for t in result['top']], probabilities[top],
                                 rtol=1e-4)
  # The command line: a line per image, the damaged files named, exit code 1.
  assert train_helpers.run_cli(predict_cli.cli, ['predict', f'--export_dir={out}', '--format=stablehlo',
                                             '--top_k=2', str(folder)]) == 1
  printed = capsys.readouterr()
  assert printed.out.count('.png: ') == 3 and 'cut.png: not a readable image' in printed.err
  # A directory with no image file (empty, or other files only) is an error naming it, exit 1.
  empty, others = tmp_path / 'empty', tmp_path / 'others'
  empty.mkdir()
  others.mkdir()
  (others / 'notes.txt').write_text('no image')
  for directory in (empty, others):
    assert train_helpers.run_cli(predict_cli.cli, ['predict', f'--export_dir={out}',
                                               str(directory)]) == 1
    assert f'{directory}: no image file in this directory' in capsys.readouterr().err
