"""Where each head's gradient goes in the backbone: Eq. 2, measured on a run.

Eq. 2 says the gradient reaching backbone layer l is that of alpha L plus beta_i L_a^i of every
branch attached at or after l; autodiff computes exactly that sum. What it does not say is how
large each term is and where it points. For each supervised head h (the main one and every branch,
with its weight w_h from Eq. 1) this takes the gradient of w_h L_h with respect to the backbone's
parameters, on training batches in training mode (BatchNorm on batch statistics, dropout on), and
reports per part of the backbone (the stem, each stage, the final norm and the classifier):

- the norm of the head's gradient (averaged over the batches: the direction SGD follows), and
- its cosine with the main head's gradient: near 1, the branch pushes the stage where the main head
  does; near 0, somewhere else; below 0, against it.

  python -m dsop_jax.gradients --workdir=DIR            # the run's latest checkpoint
  python -m dsop_jax.gradients --workdir=DIR --init     # a fresh initialisation of its config
"""

import functools
from typing import Any, Callable, Dict, Iterable, Mapping, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dsop_jax.data import datasets
from dsop_jax.data import input_pipeline
from dsop_jax.models import dsop
from dsop_jax.models import registry
from dsop_jax.training import losses
from dsop_jax.training import restoring
from dsop_jax.training import steps

MAIN_HEAD = 'logits'


def part(name: str) -> str:
  """The backbone part a top-level parameter subtree belongs to: 'stage2' for 'stage2_block1', the
  subtree's own name otherwise (the stem's conv, the final norm, the classifier)."""
  return name.split('_')[0] if name.startswith('stage') else name


@functools.lru_cache(maxsize=4)
def _jacobian(model: Any, weights: Tuple[Tuple[str, float], ...]) -> Callable[..., Any]:
  """Jitted: (backbone params, other params, BN statistics, batch, rng) -> the gradient of every
  weighted head loss, stacked on a leading axis in the order of `weights`."""

  def weighted_losses(backbone, others, batch_stats, batch, dropout_rng):
    outputs, _ = model.apply({'params': {**others, dsop.BACKBONE: backbone},
                              'batch_stats': batch_stats}, batch['image'], train=True,
                             mutable=['batch_stats'], rngs={'dropout': dropout_rng})
    heads = losses.head_logits(outputs)
    return jnp.stack([w * losses.cross_entropy(logits=heads[n], labels=batch['label'])
                      for n, w in weights])

  return jax.jit(jax.jacrev(weighted_losses))


def head_gradients(model: Any, weights: Mapping[str, float], variables: Mapping[str, Any],
                   batches: Iterable[Mapping[str, Any]], rng: jax.Array) -> Dict[str, Any]:
  """{head: gradient of weights[head] * L_head with respect to the backbone's parameters}, the
  mean over `batches` (training mode; dropout from `rng`, folded with the batch's index)."""
  jacobian = _jacobian(model, tuple(weights.items()))
  backbone = variables['params'][dsop.BACKBONE]
  others = {k: v for k, v in variables['params'].items() if k != dsop.BACKBONE}
  total, count = None, 0
  for index, batch in enumerate(batches):
    grads = jacobian(backbone, others, variables['batch_stats'], batch,
                     jax.random.fold_in(rng, index))
    total = grads if total is None else jax.tree.map(jnp.add, total, grads)
    count += 1
  if not count:
    raise ValueError('head_gradients needs at least one batch.')
  mean = jax.tree.map(lambda g: np.asarray(g) / count, total)
  return {n: jax.tree.map(lambda g, i=i: g[i], mean) for i, n in enumerate(weights)}


def _input_to_output(name: str) -> Tuple[int, str]:
  """Sort key: the stem, the stages in order, then what follows them (final norm, classifier)."""
  number = name[len('stage'):]
  if name.startswith('stage') and number.isdigit():
    return 1, f'{int(number):04d}'
  return (0 if 'stem' in name or 'init' in name else 2), name


def _by_part(tree: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Every parameter of each backbone part, flattened into one vector."""
  leaves: Dict[str, list] = {}
  for name, subtree in tree.items():
    leaves.setdefault(part(name), []).extend(
        np.ravel(x) for x in jax.tree.leaves(subtree))
  return {p: np.concatenate(xs).astype(np.float64) for p, xs in leaves.items()}


def summarise(gradients: Mapping[str, Any], weights: Mapping[str, float]) -> Dict[str, Any]:
  """{'parts': [...], 'heads': {head: {'weight', 'norm': {part: float},
  'cosine_with_main': {part: float or None}}}}; the cosine is None where either gradient is 0."""
  flat = {head: _by_part(tree) for head, tree in gradients.items()}
  parts = sorted(flat[MAIN_HEAD], key=_input_to_output)
  result = {'parts': parts, 'heads': {}}
  for head, vectors in flat.items():
    norms = {p: float(np.linalg.norm(v)) for p, v in vectors.items()}
    cosines = {}
    for p, v in vectors.items():
      main = flat[MAIN_HEAD][p]
      denominator = norms[p] * float(np.linalg.norm(main))
      cosines[p] = float(v @ main / denominator) if denominator > 0 else None
    result['heads'][head] = {'weight': float(weights[head]), 'norm': norms,
                             'cosine_with_main': cosines}
  return result


def measure(config: ml_collections.ConfigDict, workdir: str, *, init: bool = False,
            num_batches: int = 4, batch_size: int = 128) -> Dict[str, Any]:
  """`summarise` of `head_gradients` for the run in WORKDIR (its latest checkpoint, or a fresh
  initialisation of its config with `init`), on its first `num_batches` training batches of the
  data order of seed config.train.seed."""
  model = registry.create(config.model)
  weights = registry.loss_weights(config)
  if init:
    example = jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.float32)
    variables = registry.init_variables(model, jax.random.key(config.train.seed), example)
  else:
    variables = restoring.restore_variables(config, workdir)
  batches = input_pipeline.train_batches(config, local_batch_size=batch_size, start_step=0,
                                         seed=config.train.seed)
  info = datasets.dataset_info(config)
  chosen = ({**b, 'image': steps.normalise_images(jnp.asarray(b['image']), info.mean, info.std)}
            for b in (next(batches) for _ in range(num_batches)))
  gradients = head_gradients(model, weights, variables, chosen, jax.random.key(0))
  return summarise(gradients, weights)


def format_table(result: Mapping[str, Any]) -> str:
  """Two plain-text tables of a `summarise` result: norms, then cosines with the main head."""
  parts = result['parts']
  lines = []
  for title, key, fmt in (('gradient norm of w_h * L_h', 'norm', '{:.2e}'),
                          ('cosine with the main head', 'cosine_with_main', '{:+.3f}')):
    lines.append(f'{title}:')
    lines.append(f'{"head":<16}{"w_h":>6}' + ''.join(f'{p:>13}' for p in parts))
    for head, row in result['heads'].items():
      cells = ['-' if row[key][p] is None else fmt.format(row[key][p]) for p in parts]
      lines.append(f'{head:<16}{row["weight"]:>6g}' + ''.join(f'{c:>13}' for c in cells))
    lines.append('')
  return '\n'.join(lines)
