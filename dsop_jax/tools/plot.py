"""Training curves and final-number tables from dsop_jax runs (WORKDIR/metrics.jsonl), headless.

- One run: every head's eval top-1 and top-5 error (%) against epoch, the main first-order head
  and each auxiliary branch (the paper's Fig. 5).
- Several runs: first the main head of every run side by side (Fig. 4, e.g. plain vs DSoP), then
  the per-head curves of each run that has branches.
- A markdown table of the final (and best) error of every head of every run (Tables III, V), and,
  when several runs share a configuration (e.g. seeds 1-3 of a plain and of a DSoP run), the mean
  and standard deviation of their main head's final top-1 error.
- Plain runs paired with DSoP runs of the same training subset and seed (`launch/seeds.sh`): each
  pair's gain, the mean gain per subset, the paired mean gain with its 95% t-interval, DSoP-Net's
  training time over plain's, and (`--pairs_output`) a figure of each pair's final error and of the
  two configurations' mean curves with a band over runs, on an axis that shows the last epochs.

  python -m dsop_jax.plot --workdir=/tmp/dsop_quickstart --workdir=/tmp/plain --output=curves.png

Labels come from each run's config.json. matplotlib draws on its Agg canvas through the
object-oriented `Figure` API, so no display or pyplot backend is involved.
"""

import dataclasses
import json
import math
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
from matplotlib import figure as mpl_figure
import numpy as np
from scipy import stats

from dsop_jax import paths
from dsop_jax.models import registry
from dsop_jax.training import optim
from dsop_jax.training import runs as runs_lib

MAIN_HEAD = 'logits'
METRICS = ('top1', 'top5')
# Fields that say where the data lies, how often to log, checkpoint or evaluate, and how large the
# (masked) evaluation batches are: runs that differ only in them computed the same thing.
RESULT_FREE_FIELDS = frozenset(
    f'config.{name}' for name in (
        'data.data_dir', 'train.eval_every_epochs', 'train.log_every_steps', 'train.tensorboard',
        'train.checkpoint_every_steps', 'train.checkpoint_every_epoch', 'train.keep_checkpoints',
        'train.keep_best', 'train.async_checkpointing', 'train.profile_steps',
        'train.allow_resume_changes', 'eval.batch_size'))
# What a run's repetitions vary: the seed and the training subset.
REPETITION_FIELDS = frozenset({'config.train.seed', 'config.data.train_subset_seed'})
# What training branches adds to a plain network's config (the plain run of launch/seeds.sh
# clears config.model.branches.pattern): a plain and a DSoP run to compare differ only here.
BRANCH_FIELDS = ('config.model.branches.', 'config.loss.betas', 'config.train.policy',
                 'config.train.remove_branches_at_epoch', 'config.train.backbone_checkpoint')


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: its workdir, a label, its evaluations sorted by step, and the order of its
  main head's pooling (2 for the second-order network of `config.model.head`)."""
  workdir: str
  label: str
  records: List[Dict[str, Any]]
  main_order: int = 1
  group: str = ''  # The configuration's label: runs that differ only in their seed share it.
  seed: int = 0
  subset: int = 0  # config.data.train_subset_seed: which training subset.
  branches: int = 0  # Auxiliary branches trained (0: a plain network).
  # What the run computes (`settings`): its config's fields but the seed, the subset and those
  # that change no result (RESULT_FREE_FIELDS).
  settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
  num_steps: Optional[int] = None  # The training steps its config asks for (None: unknown).

  @property
  def finished(self) -> bool:
    """Whether its last evaluation is at the end of training (True when that is unknown)."""
    return self.num_steps is None or self.records[-1]['step'] >= self.num_steps

  @property
  def train_seconds(self) -> Optional[float]:
    """Wall seconds of training to the last evaluation (None for runs that did not record it)."""
    return self.records[-1].get('train_seconds')

  @property
  def final_error(self) -> float:
    """The main head's top-1 error (%) at the last evaluation."""
    return self.curve(MAIN_HEAD, 'top1')[1][-1]

  def head_label(self, head: str) -> str:
    order = 'first' if self.main_order == 1 else 'second'
    return f'main ({order}-order)' if head == MAIN_HEAD else head

  @property
  def heads(self) -> List[str]:
    """The main head first, then every other head in the order of the first evaluation."""
    seen = {}
    for record in self.records:
      seen.update(dict.fromkeys(record['eval']))
    return [MAIN_HEAD] * (MAIN_HEAD in seen) + [h for h in seen if h != MAIN_HEAD]

  def curve(self, head: str, metric: str) -> tuple:
    """(epochs, error in %) of one head; evaluations without that head are left out."""
    points = [(r['epoch'], 100.0 * (1.0 - r['eval'][head][metric]))
              for r in self.records if head in r['eval']]
    return tuple(zip(*points)) if points else ((), ())


def _parse_record(line: str) -> Dict[str, Any]:
  """One metrics.jsonl line; ValueError unless it has a step, an epoch and per-head eval metrics."""
  record = json.loads(line)  # json.JSONDecodeError is a ValueError.
  try:
    record['step'], record['epoch'] = int(record['step']), float(record['epoch'])
    for head, values in record['eval'].items():
      values.update({m: float(values[m]) for m in METRICS})
  except (KeyError, TypeError, AttributeError) as e:
    raise ValueError(f'missing or malformed field {e}') from e
  return record


def read_metrics(workdir: str) -> List[Dict[str, Any]]:
  """The evaluations in WORKDIR/metrics.jsonl, one per step, sorted by step.

  A resumed run can evaluate a step again; the later record wins. A run killed while writing can
  leave an incomplete last line, which is skipped with a warning.

  Raises:
    ValueError: no metrics.jsonl, a malformed line before the last, or no evaluation at all.
  """
  path = paths.path(workdir, '--workdir') / runs_lib.METRICS_FILE
  if not path.exists():
    raise ValueError(f'--workdir={workdir!r} holds no metrics.jsonl: not a dsop_jax training '
                     'workdir, or no evaluation has finished yet.')
  lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
  by_step = {}
  for n, line in lines:
    try:
      record = _parse_record(line)
    except ValueError as e:
      if n == lines[-1][0]:
        logging.warning('%s: skipping the incomplete last line %d (%s).', path, n, e)
        continue
      raise ValueError(f'{path}, line {n}, is not an evaluation record ({e}).') from e
    by_step[record['step']] = record
  if not by_step:
    raise ValueError(f'{path} holds no evaluation yet.')
  return [by_step[s] for s in sorted(by_step)]


def config_label(config: Any) -> str:
  """'preact_resnet20 + DSoP (3 branches)' or 'preact_resnet20 (plain)', from a run's config; a
  second-order network reads 'resnet50 + isqrt_cov head (psdr to 256)'."""
  head = registry.head_spec(config.model)
  name = config.model.name if head is None else (
      f'{config.model.name} + {head.pool} head ({head.reduction} to {head.pool_channels})')
  branches = [s for s in registry.branch_specs(config.model)
              if head is None or not s.name.startswith(head.name)]
  if not branches:
    return f'{name} (plain)' if head is None else name
  pool = '' if config.model.branches.pool == 'isqrt_cov' else f', {config.model.branches.pool}'
  policy = config.train.policy
  policy = '' if policy == 'one_phase' else f', {policy.replace("_", " ")}'
  count = f'{len(branches)} branch' + ('es' if len(branches) != 1 else '')
  return f'{name} + DSoP ({count}{pool}{policy})'


def load_runs(workdirs: Sequence[str], labels: Optional[Sequence[str]] = None) -> List[Run]:
  """Reads every workdir; labels default to the configurations' (`_groups`: the config's label
  and what sets it apart from runs of the same label), made unique with the workdir's name."""
  if not workdirs:
    raise ValueError('--workdir: give at least one training workdir.')
  if labels and len(labels) != len(workdirs):
    raise ValueError(f'--label: got {len(labels)} labels for {len(workdirs)} workdirs; give one '
                     'per --workdir, in the same order, or none.')
  records = [read_metrics(w) for w in workdirs]
  configs = [runs_lib.workdir_config(w) for w in workdirs]
  settings = [run_settings(c) for c in configs]
  groups = _groups([config_label(c) for c in configs], settings)
  if not labels:
    labels = [f'{group} [{os.path.basename(os.path.normpath(w))}]' if groups.count(group) > 1
              else group for group, w in zip(groups, workdirs)]
  orders = [1 if registry.head_spec(c.model) is None else 2 for c in configs]
  seeds = [c.train.seed for c in configs]
  subsets = [c.data.train_subset_seed for c in configs]
  branches = [len(registry.branch_specs(c.model)) for c in configs]
  num_steps = [_num_steps(c, r) for c, r in zip(configs, records)]
  return [Run(*args) for args in zip(workdirs, labels, records, orders, groups, seeds, subsets,
                                     branches, settings, num_steps)]


def run_settings(config: Any) -> Dict[str, Any]:
  """A run's config as {'config.train.num_epochs': 10.0, ...}, without REPETITION_FIELDS and
  RESULT_FREE_FIELDS: two runs with the same settings are repetitions of one configuration."""
  flat = runs_lib.flatten(config.to_dict(), 'config')
  return {k: v for k, v in flat.items()
          if k not in REPETITION_FIELDS and k not in RESULT_FREE_FIELDS}


def _groups(labels: Sequence[str], settings: Sequence[Dict[str, Any]]) -> List[str]:
  """Each run's configuration: its label, followed by the fields in which runs of that label
  differ ('preact_resnet20 (plain) [train.num_epochs=20.0]'), so that only repetitions share one."""
  groups = []
  for label, own in zip(labels, settings):
    others = [s for other, s in zip(labels, settings) if other == label]
    varying = sorted(k for k in set().union(*others)
                     if any(s.get(k) != own.get(k) for s in others))
    named = ', '.join(f'{k[len("config."):]}={own.get(k)!r}' for k in varying)
    groups.append(f'{label} [{named}]' if varying else label)
  return groups


def _num_steps(config: Any, records: List[Dict[str, Any]]) -> Optional[int]:
  """The training steps the run's config asks for, with its steps per epoch read off its records
  (None when no record says: an evaluation at epoch 0)."""
  last = records[-1]
  if last['epoch'] <= 0:
    return None
  return optim.num_train_steps(config, int(round(last['step'] / last['epoch'])))


def _axes_style(ax: Any, metric: str, title: str) -> None:
  ax.set_title(title, fontsize=10)
  ax.set_xlabel('epoch')
  ax.set_ylabel(f'{"top-1" if metric == "top1" else "top-5"} error (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)


def figure(runs: Sequence[Run]) -> mpl_figure.Figure:
  """Fig. 4 (main heads of several runs, when there are several) and Fig. 5 (every head of each
  run with branches; of the run when there is one) as rows of top-1 | top-5 error panels."""
  rows: List[Optional[Run]] = [None] if len(runs) > 1 else []
  rows += [r for r in runs if len(runs) == 1 or len(r.heads) > 1]
  fig = mpl_figure.Figure(figsize=(12, 4 * len(rows)), layout='constrained')
  axes = fig.subplots(len(rows), 2, squeeze=False)
  for run, panels in zip(rows, axes):
    for metric, ax in zip(METRICS, panels):
      name = 'top-1' if metric == 'top1' else 'top-5'
      if run is None:
        for r in runs:
          ax.plot(*r.curve(MAIN_HEAD, metric), marker='.', label=r.label)
        _axes_style(ax, metric, f'Main head of each run, {name} error')
      else:
        for head in run.heads:
          main = head == MAIN_HEAD
          ax.plot(*run.curve(head, metric), marker='.', label=run.head_label(head),
                  linewidth=2.2 if main else 1.2, linestyle='-' if main else '--',
                  zorder=3 if main else 2)
        _axes_style(ax, metric, f'{run.label}: every head, {name} error')
  return fig


def summary_rows(runs: Sequence[Run]) -> List[Dict[str, Any]]:
  """Per run and head: the last evaluation's epoch and errors, and the best top-1 error."""
  rows = []
  for run in runs:
    for head in run.heads:
      epochs, top1 = run.curve(head, 'top1')
      _, top5 = run.curve(head, 'top5')
      best = min(range(len(top1)), key=top1.__getitem__)
      rows.append({'run': run.label, 'head': run.head_label(head), 'epoch': epochs[-1],
                   'top1_error': top1[-1], 'top5_error': top5[-1],
                   'best_top1_error': top1[best], 'best_epoch': epochs[best]})
  return rows


def markdown_table(runs: Sequence[Run]) -> str:
  """Final top-1/top-5 error (%) of every head of every run, and the best top-1 with its epoch."""
  lines = ['| run | head | epoch | top-1 err (%) | top-5 err (%) | best top-1 err (%) (epoch) |',
           '|---|---|---|---|---|---|']
  fmt = lambda x: 'n/a' if math.isnan(x) else f'{x:.2f}'  # noqa: E731
  for row in summary_rows(runs):
    lines.append(f"| {row['run']} | {row['head']} | {round(row['epoch'], 2):g} | {fmt(row['top1_error'])} | "
                 f"{fmt(row['top5_error'])} | {fmt(row['best_top1_error'])} "
                 f"({round(row['best_epoch'], 2):g}) |")
  return '\n'.join(lines)


def seeds_table(runs: Sequence[Run]) -> str:
  """For each configuration with several runs (seeds): the main head's final top-1 error (%), mean
  and sample standard deviation over its runs, and each run's; '' when no configuration repeats."""
  groups: Dict[str, List[Run]] = {}
  for run in runs:
    groups.setdefault(run.group, []).append(run)
  if all(len(members) == 1 for members in groups.values()):
    return ''
  subsets = any(run.subset for run in runs)  # Name each run by subset and seed, not seed alone.
  lines = ['| configuration | runs | main-head top-1 err (%), mean +- std | each run '
           f'({"subset/" * subsets}seed: err) |', '|---|---|---|---|']
  for group, members in groups.items():
    errors = [run.curve(MAIN_HEAD, 'top1')[1][-1] for run in members]
    spread = f' +- {statistics.stdev(errors):.2f}' if len(errors) > 1 else ''
    each = ', '.join(f'{f"{run.subset}/" * subsets}{run.seed}: {error:.2f}'
                     for run, error in zip(members, errors))
    lines.append(f'| {group} | {len(members)} | {statistics.mean(errors):.2f}{spread} | {each} |')
  return '\n'.join(lines)


def pairs(runs: Sequence[Run]) -> List[Tuple[Run, Run]]:
  """(plain, DSoP) runs of the same training subset and seed, ordered by (subset, seed); [] unless
  the runs are of exactly two configurations, one of them plain. Unfinished runs are left out
  (`unfinished` names them).

  Raises:
    ValueError: the two configurations differ in more than the branches (their gap would not be
      DSoP-Net's gain), or one holds two runs of the same subset and seed.
  """
  groups = {run.group: run for run in runs}
  if len(groups) != 2 or sorted(r.branches == 0 for r in groups.values()) != [False, True]:
    return []
  plain, dsop = sorted(groups.values(), key=lambda r: r.branches)
  strip = lambda settings: {k: v for k, v in settings.items()  # noqa: E731
                            if not k.startswith(BRANCH_FIELDS)}
  ours, theirs = strip(plain.settings), strip(dsop.settings)
  differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
  if differ:
    raise ValueError(
        'the plain and the DSoP runs differ in more than their branches: '
        + '; '.join(f'{k[len("config."):]} = {ours.get(k)!r} (plain) vs {theirs.get(k)!r} (DSoP)'
                    for k in differ)
        + ". Their gap would not be DSoP-Net's gain: compare runs of one command "
        '(launch/seeds.sh trains both).')
  found: Dict[Tuple[int, int], Dict[bool, Run]] = {}
  for run in runs:
    slot, is_plain = found.setdefault((run.subset, run.seed), {}), run.branches == 0
    if is_plain in slot:
      raise ValueError(f'{slot[is_plain].workdir!r} and {run.workdir!r} are both the '
                       f'{"plain" if is_plain else "DSoP"} run of subset {run.subset}, '
                       f'seed {run.seed}: give each run once.')
    slot[is_plain] = run
  return [(pair[True], pair[False]) for _, pair in sorted(found.items())
          if len(pair) == 2 and pair[True].finished and pair[False].finished]


def unfinished(runs: Sequence[Run]) -> List[str]:
  """'WORKDIR (step S of N)' for each run whose last evaluation is before the end of training."""
  return [f'{run.workdir} (step {run.records[-1]["step"]} of {run.num_steps})'
          for run in runs if not run.finished]


def t_interval(values: Sequence[float], level: float = 0.95) -> Tuple[float, float]:
  """The two-sided Student-t interval of the mean of `values` (at least two)."""
  mean, sem = statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))
  half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * sem
  return mean - half, mean + half


def paired_table(runs: Sequence[Run]) -> str:
  """Plain against DSoP-Net on the same subset and seed (`pairs`): each pair's main-head final
  top-1 error, gain (plain's error minus DSoP's, points) and training minutes; the mean gain per
  subset; and over all pairs the mean gain, its sample standard deviation, its 95% t-interval and
  DSoP-Net's training time over plain's (mean of the pairs' ratios). '' without pairs."""
  try:
    matched = pairs(runs)
  except ValueError as e:
    return f'No paired gains: {e}'
  left_out = unfinished(runs) if matched else []
  left_out = (f'\n\nLeft out, not finished (rerun the command to resume them): '
              f'{", ".join(left_out)}.' if left_out else '')
  if not matched:
    return ''
  minutes = lambda run: ('n/a' if run.train_seconds is None  # noqa: E731
                         else f'{run.train_seconds / 60:.1f}')
  lines = ['| subset | seed | plain err (%) | DSoP-Net err (%) | gain (points) | plain min | '
           'DSoP-Net min |', '|---|---|---|---|---|---|---|']
  gains, by_subset, ratios = [], {}, []
  for plain, dsop in matched:
    gain = plain.final_error - dsop.final_error
    gains.append(gain)
    by_subset.setdefault(plain.subset, []).append(gain)
    if plain.train_seconds and dsop.train_seconds:
      ratios.append(dsop.train_seconds / plain.train_seconds)
    lines.append(f'| {plain.subset} | {plain.seed} | {plain.final_error:.2f} | '
                 f'{dsop.final_error:.2f} | {gain:+.2f} | {minutes(plain)} | {minutes(dsop)} |')
  lines += ['', '| subset | pairs | mean gain (points) |', '|---|---|---|']
  lines += [f'| {subset} | {len(g)} | {statistics.mean(g):+.2f} |'
            for subset, g in sorted(by_subset.items())]
  summary = (f'Paired mean gain over {len(gains)} pair{"s" if len(gains) > 1 else ""}: '
             f'{statistics.mean(gains):+.2f} points')
  if len(gains) > 1:
    low, high = t_interval(gains)
    summary += (f', standard deviation {statistics.stdev(gains):.2f}, 95% t-interval '
                f'[{low:+.2f}, {high:+.2f}]; DSoP-Net ahead in {sum(g > 0 for g in gains)} of '
                f'{len(gains)} pairs')
  if ratios:
    summary += f'; DSoP-Net\'s training time over plain\'s: {statistics.mean(ratios):.2f}x'
  return '\n'.join(lines + ['', summary + '.']) + left_out


def pairs_figure(runs: Sequence[Run]) -> mpl_figure.Figure:
  """Left: each (subset, seed) pair's final main-head top-1 error, plain beside DSoP-Net joined by
  a line, coloured by subset. Right: each configuration's mean main-head top-1 error curve with a
  band of +- one standard deviation over its runs, the axes fitted to the last quarter of the
  evaluations (at least 3) so that differences of a fraction of a point show."""
  try:
    matched = pairs(runs)
  except ValueError as e:
    raise ValueError(f'--pairs_output: {e}') from e
  if not matched:
    raise ValueError('--pairs_output: the runs hold no finished plain and DSoP run of the same '
                     'subset and seed (train them with launch/seeds.sh).')
  fig = mpl_figure.Figure(figsize=(12, 4.5), layout='constrained')
  left, right = fig.subplots(1, 2)
  subsets = sorted({plain.subset for plain, _ in matched})
  colours = {s: f'C{i % 10}' for i, s in enumerate(subsets)}
  for plain, dsop in matched:
    left.plot([0, 1], [plain.final_error, dsop.final_error], marker='o',
              color=colours[plain.subset], alpha=0.8)
  for subset in subsets:
    left.plot([], [], color=colours[subset], marker='o', label=f'subset {subset}')
  left.set_xticks([0, 1], ['plain', 'DSoP-Net'])
  left.set_xlim(-0.3, 1.3)
  _axes_style(left, 'top1', 'Final main-head error of each (subset, seed) pair')
  left.set_xlabel('')
  low, high = math.inf, -math.inf
  for index, members in enumerate(([p for p, _ in matched], [d for _, d in matched])):
    epochs = np.asarray(members[0].curve(MAIN_HEAD, 'top1')[0])
    curves = np.stack([np.interp(epochs, *run.curve(MAIN_HEAD, 'top1')) for run in members])
    mean, std = curves.mean(0), curves.std(0)
    right.plot(epochs, mean, marker='.', color=f'C{index}',
               label=f'{members[0].group} (mean of {len(members)})')
    right.fill_between(epochs, mean - std, mean + std, color=f'C{index}', alpha=0.2)
    # The last quarter of the evaluations (at least 3): mid-training errors at a high learning
    # rate swing by tens of points and would hide a final gap of a fraction of one.
    late = slice(-max(3, len(epochs) // 4), None)
    low, high = min(low, (mean - std)[late].min()), max(high, (mean + std)[late].max())
  margin = 0.1 * (high - low) + 0.05
  right.set_ylim(low - margin, high + margin)
  first, last = epochs[late][0], epochs[-1]
  pad = 0.1 * (last - first) or 0.5
  right.set_xlim(first - pad, last + pad)
  _axes_style(right, 'top1', 'Main head, mean +- std over runs (last evaluations)')
  return fig


def _image_target(output: str, flag: str) -> Tuple[Any, str]:
  formats = mpl_figure.Figure().canvas.get_supported_filetypes()
  extension = os.path.splitext(output)[1].lstrip('.').lower()
  if extension not in formats:
    raise ValueError(f'{flag}={output!r}: the extension {extension!r} is not an image format; '
                     f'allowed: {", ".join(sorted(formats))}.')
  target = paths.path(output, flag)
  target.parent.mkdir(parents=True, exist_ok=True)
  return target, extension


def render(workdirs: Sequence[str], output: str, labels: Optional[Sequence[str]] = None,
           dpi: int = 100, pairs_output: Optional[str] = None) -> str:
  """Draws the curves of `workdirs` to `output` (format from its extension: png, pdf, svg, ...)
  and, with `pairs_output`, the pairs figure; returns the markdown summary tables."""
  target, extension = _image_target(output, '--output')
  pairs_target = pairs_output and _image_target(pairs_output, '--pairs_output')
  if pairs_target and str(pairs_target[0]) == str(target):
    raise ValueError(f'--pairs_output={pairs_output!r} is --output: give the pairs figure a file '
                     'of its own.')
  runs = load_runs(workdirs, labels)
  figures = [(figure(runs), target, extension)]
  if pairs_target:
    figures.append((pairs_figure(runs), *pairs_target))
  for fig, path, ext in figures:
    with path.open('wb') as f:
      fig.savefig(f, dpi=dpi, format=ext)
  tables = [markdown_table(runs), seeds_table(runs), paired_table(runs)]
  return '\n\n'.join(t for t in tables if t)
