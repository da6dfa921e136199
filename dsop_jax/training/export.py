"""Detaching the auxiliary branches: from DSoP-Net training variables to the plain network's.

After training, "all auxiliary branches are removed and only the backbone first-order network is
preserved for inference" (Section III-A). Because `dsop.DSoPNet` keeps the backbone's variables in
one 'backbone' subtree and every branch in its own top-level subtree, detaching drops the branch keys
and returns the backbone subtree of every collection, which `registry.create_backbone(config)` accepts
unchanged. Nothing is recomputed or re-initialised, so the detached network is bit-identical. For
the second-order network (`gsop.py`) the backbone subtree holds its covariance head too, and the
side branches of its PSDR are detached like DSoP branches.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dsop_jax import paths
from dsop_jax.data import datasets
from dsop_jax.data import input_pipeline
from dsop_jax.deploy import artifact
from dsop_jax.deploy import onnx_export
from dsop_jax.deploy import torch_weights
from dsop_jax.models import dsop
from dsop_jax.models import registry
from dsop_jax.training import restoring
from dsop_jax.training import runs



detach = dsop.detach  # Here too, beside the rest of the export path.


def export(workdir: str, output_dir: str, *, overwrite: bool = False, step: Optional[int] = None,
           best: bool = False, formats: Sequence[str] = ('orbax',), ema: bool = False) -> str:
  """Writes the detached first-order network of WORKDIR's latest checkpoint (or of `step`, or with
  `best` of the one saved with the best main-head eval top-1) to OUTPUT_DIR; with `ema`, the
  checkpoint's moving average of the variables (config.optim.ema_decay) instead of the variables.

  OUTPUT_DIR gets 'variables/' (an Orbax checkpoint of {'params', 'batch_stats'} of the plain
  network), 'model_config.json' (the config.model it is built from), 'preprocessing.json' (how
  images must be prepared: `input_pipeline.preprocessing`, with the class names when known) and
  'model_card.json' (architecture, parameters, XLA's FLOPs per image, the training config, the
  step and its main-head eval top-1). `formats` may add 'stablehlo': 'model.stablehlo', the
  inference network as a serialised `jax.export` module with its weights inside and a symbolic
  batch size, which `jax.export.deserialize(data).call(images)` runs without dsop_jax or flax;
  and 'onnx': 'model.onnx' (`onnx_export.convert`: input 'images' [batch, H, W, 3] float32
  prepared as preprocessing.json says, output 'logits') for onnxruntime and other ONNX runtimes,
  for the networks whose every operation it translates (not the second-order head of Table XI);
  and 'torchvision': 'model.safetensors', the state dict of the stock torchvision (ResNets) or
  timm (SE-ResNeXt-101, EfficientNet-b0) model (`torch_weights`), which it loads with
  `load_state_dict(strict=True)`, and 'torch.json', the lines that build that model (setting the
  stride of -s1 networks) and load it, and its input layout.
  The export is written whole in a sibling directory first and then renamed into place; an export
  it replaces is renamed aside before and deleted after, so at every moment one complete export
  exists (a run killed between the two renames leaves it at OUTPUT_DIR.old-PID, which the next
  export puts back).

  Raises:
    ValueError: WORKDIR has no config.json or no checkpoint (of `step`; evaluated, with `best`),
      or OUTPUT_DIR is not a place export may write (`check_output_dir`), or the network has an
      operation the ONNX converter does not translate (with 'onnx') or no torchvision/timm
      counterpart (with 'torchvision'); nothing is written then.
  """
  unknown = sorted(set(formats) - set(artifact.FORMATS))
  if unknown:
    raise ValueError(f'--format={",".join(formats)} is invalid: {", ".join(unknown)} unknown; '
                     f'allowed: {", ".join(artifact.FORMATS)}.')
  given, output_dir = output_dir, paths.path(output_dir, '--output_dir')
  config = runs.workdir_config(workdir)
  if 'torchvision' in formats:
    torch_weights.check_supported(config.model, '--format=torchvision')
    torch_weights.setup_lines(config.model)  # Raises for a network no library builds.
  _recover_replaced_export(output_dir)
  check_output_dir(output_dir, workdir, overwrite)
  variables, step = restoring.restore_variables_and_step(config, workdir, step=step, best=best, ema=ema)
  detached = detach(variables, [s.name for s in registry.branch_specs(config.model)])
  bad = [jax.tree_util.keystr(path) for path, x in jax.tree.leaves_with_path(detached)
         if not np.all(np.isfinite(np.asarray(x)))]
  if bad:  # A checkpoint written before the step checked its new state could hold them.
    raise ValueError(f'The latest checkpoint in {workdir!r} holds non-finite values in '
                     f'{len(bad)} variable(s), e.g. {bad[:3]}; nothing was exported.')
  module = registry.create_backbone(config.model)
  size = config.data.image_size
  forward = jax.jit(lambda x: module.apply(detached, x, train=False)[0])
  onnx_model = None
  if 'onnx' in formats:  # Before anything is written: a network it cannot translate is refused.
    try:
      onnx_model = onnx_export.convert(forward, (size, size, 3),
                                       doc=f'{config.model.name}, detached by dsop_jax')
    except NotImplementedError as e:
      raise ValueError(f'--format=onnx is invalid for {config.model.name}: {e}') from e
  staging = output_dir.with_name(f'{output_dir.name}.tmp-{os.getpid()}')
  if staging.exists():
    staging.rmtree()
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(staging / 'variables', detached)
  (staging / 'model_config.json').write_text(config.model.to_json_best_effort(indent=2))
  recipe = {**input_pipeline.preprocessing(config),
            'class_names': runs.class_names(config, workdir)}
  _write_json(staging / 'preprocessing.json', recipe)
  _write_json(staging / 'model_card.json',
              {**_model_card(config, workdir, step, detached, forward, size, ema),
               'weights': 'moving average' if ema else 'trained'})
  if 'stablehlo' in formats:
    batch = jax.export.symbolic_shape('batch')[0]
    exported = jax.export.export(forward)(
        jax.ShapeDtypeStruct((batch, size, size, 3), jax.numpy.float32))
    (staging / artifact.STABLEHLO_FILE).write_bytes(exported.serialize())
  if onnx_model is not None:
    onnx_export.save(onnx_model, staging / artifact.ONNX_FILE)
  if 'torchvision' in formats:
    _write_torch(config, detached, step, staging)
  if output_dir.exists():
    replaced = output_dir.with_name(f'{output_dir.name}.old-{os.getpid()}')
    paths.move_tree(output_dir, replaced)
    paths.move_tree(staging, output_dir)
    replaced.rmtree()
  else:
    paths.move_tree(staging, output_dir)
  return given


def _resolved(p: epath.Path) -> str:
  return str(p) if paths.is_remote(p) else os.path.realpath(os.fspath(p))


def check_output_dir(output_dir: epath.Path, workdir: paths.PathLike, overwrite: bool) -> None:
  """Export writes only where it loses nothing: a path that does not exist, an empty directory,
  or (with `overwrite`) an export holding nothing but an export's files.

  Raises:
    ValueError: naming --output_dir and what is there: the training workdir or a directory that
      holds it, an existing file, a directory with entries an export does not write, or an export
      without `overwrite`. Nothing is deleted then.
  """
  target, source = _resolved(output_dir), _resolved(paths.path(workdir, '--workdir'))
  if target == source or source.startswith(target.rstrip('/') + '/'):
    raise ValueError(f'--output_dir={str(output_dir)!r} is invalid: it is the training workdir '
                     f'{str(workdir)!r} or a directory that holds it; export into a new directory '
                     '(e.g. beside the workdir).')
  if not output_dir.exists():
    return
  if not output_dir.is_dir():
    raise ValueError(f'--output_dir={str(output_dir)!r} is invalid: it is an existing file, not a '
                     'directory; give a path that does not exist (or an earlier export).')
  entries = sorted(e.name for e in output_dir.iterdir())
  foreign = [e for e in entries if e not in artifact.EXPORT_ENTRIES]
  if foreign:
    raise ValueError(f'--output_dir={str(output_dir)!r} is invalid: it holds files that are not '
                     f'an export\'s ({", ".join(foreign[:5])}{", ..." if len(foreign) > 5 else ""}'
                     '); export writes only into a new or empty directory, or replaces an earlier '
                     'export, so nothing of yours is deleted. Give another --output_dir.')
  if 'model_config.json' in entries and not overwrite:
    raise ValueError(f'--output_dir={str(output_dir)!r} already holds an export; pass --overwrite '
                     'to replace it.')


def _write_torch(config: ml_collections.ConfigDict, variables: Mapping[str, Any], step: int,
                 directory: epath.Path) -> None:
  """model.safetensors (the stock PyTorch model's state dict) and torch.json (how to load it)."""
  library = torch_weights.LIBRARIES[config.model.name][0]
  torch_weights.write_safetensors(
      directory / artifact.TORCH_FILE,
      torch_weights.to_state_dict(config.model, variables, batches_tracked=step),
      {'format': 'pt', 'source': f'dsop_jax {config.model.name}, step {step}'})
  _write_json(directory / artifact.TORCH_SETUP_FILE, {
      'library': library, 'architecture': config.model.name,
      'last_stride': config.model.last_stride,
      'setup': torch_weights.setup_lines(config.model),
      'input': 'float32 NCHW, prepared as preprocessing.json says: images.permute(0, 3, 1, 2) '
               'of the NHWC batch it describes',
      'output': f'logits, {config.model.num_classes} classes (class_names in preprocessing.json)'})


def _write_json(path: epath.Path, value: Any) -> None:
  path.write_text(json.dumps(value, indent=2))


def _model_card(config: ml_collections.ConfigDict, workdir: str, step: int,
                variables: Mapping[str, Any], forward: Any, size: int, ema: bool
                ) -> Dict[str, Any]:
  """The essentials of what was exported: network, size, cost, and where it came from."""
  cost = forward.lower(jax.ShapeDtypeStruct((1, size, size, 3), jax.numpy.float32)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # One dict, or one per device.
  evaluation = runs.evaluation_at(workdir, step)
  scored = None if evaluation is None else evaluation['eval'].get('ema' if ema else 'logits')
  head = config.model.head
  return {
      'architecture': config.model.name, 'num_classes': config.model.num_classes,
      'last_stride': config.model.last_stride,
      'head': head.pool,
      'params': registry.count_params(variables['params']),
      'xla_gflops_per_image': float(cost.get('flops', 0.0)) / 1e9,
      'dataset': config.data.dataset, 'step': step,
      # The exported weights' own score: with `ema`, the moving average's ('ema' head).
      'main_head_eval_top1': None if scored is None else scored['top1'],
      'training_config': config.to_dict()}


def _recover_replaced_export(output_dir: epath.Path) -> None:
  """Puts back an export that a killed `export` renamed aside (OUTPUT_DIR.old-PID) before the
  new one took its place, and drops unfinished staging directories of killed exports."""
  parent, name = output_dir.parent, output_dir.name
  if not parent.is_dir():
    return
  for path in sorted(parent.iterdir()):
    if not path.name.startswith(name):
      continue
    kind, _, pid = path.name[len(name):].partition('-')
    if kind not in ('.old', '.tmp') or not pid.isdigit() or _alive(int(pid)):
      continue
    if not path.is_dir() or any(e.name not in artifact.EXPORT_ENTRIES for e in path.iterdir()):
      continue  # Not written by export: left alone.
    if kind == '.old' and not output_dir.exists():
      paths.move_tree(path, output_dir)
    else:
      path.rmtree(missing_ok=True)


def _alive(pid: int) -> bool:
  """Whether another process `pid` runs (an export still writing its staging directory); this
  process's own leftovers come from an export that failed earlier in it."""
  if pid == os.getpid():
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def data_config_for(config: ml_collections.ConfigDict, output_dir: paths.PathLike
                    ) -> ml_collections.ConfigDict:
  """`config` (a dataset to evaluate the export of OUTPUT_DIR on) prepared as the export says:
  its preprocessing.json's mean, standard deviation and input size.

  Raises:
    ValueError: the export does not fit the dataset, naming both sides: another class count, other
      class names (where both know them), or another resize rule.
  """
  model_config = artifact.read_json(output_dir, 'model_config.json')
  if model_config is None:
    raise ValueError(f'--export_dir={str(output_dir)!r} is not a dsop_jax export (no '
                     'model_config.json).')
  recipe = artifact.read_json(output_dir, 'preprocessing.json') or {}
  config = ml_collections.ConfigDict(config.to_dict())
  if recipe:
    config.data.mean, config.data.std = tuple(recipe['mean']), tuple(recipe['std'])
    config.data.image_size = int(recipe['input_size'][0])
  where = f'--export_dir={str(output_dir)!r}'
  data = f'config.data.dataset = {config.data.dataset!r}'
  config.model.num_classes = model_config['num_classes']  # The export's network is evaluated.
  try:
    input_pipeline.validate_data_config(config)
  except ValueError as e:
    if not str(e).startswith('config.model.num_classes'):
      raise
    raise ValueError(f'{where} is a network of {model_config["num_classes"]} classes and {data} '
                     f'has {datasets.dataset_info(config).num_classes}: evaluate an export on the '
                     'data it was trained for.') from None
  ours, theirs = datasets.class_names(config), recipe.get('class_names')
  if ours and theirs and list(ours) != list(theirs):
    differ = [(i, t, o) for i, (t, o) in enumerate(zip(theirs, ours)) if t != o]
    raise ValueError(f'{where} was trained on other classes than {data} has: label '
                     + '; '.join(f'{i} is {t!r} in the export, {o!r} in the data'
                                 for i, t, o in differ[:5]) + '.')
  rule = input_pipeline.preprocessing(config)
  if recipe and (rule['resize'] != recipe['resize'] or rule.get('grey') != recipe.get('grey')):
    raise ValueError(f'{where} prepares images by {recipe["resize"]} and {data} by '
                     f'{rule["resize"]}: evaluate an export on the data it was trained for.')
  return config


def load_first_order(path: paths.PathLike) -> Tuple[Any, Dict[str, Any]]:
  """(plain network, its variables) from an export directory or a training workdir (its latest
  checkpoint, branches detached)."""
  if (paths.path(path) / 'checkpoints').is_dir():  # A training workdir, of its own config.
    config = runs.workdir_config(path)
    variables = restoring.restore_variables(config, path)
    return registry.create_backbone(config.model), detach(
        variables, [s.name for s in registry.branch_specs(config.model)])
  return artifact.load(path)
