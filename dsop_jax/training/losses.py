"""The DSoP-Net objective of Eq. 1: alpha * L + sum_i beta_i * L_a^i with softmax cross-entropy.

Every head (the main first-order one and each auxiliary second-order one) is scored with the same
criterion against the same labels (Section III-A.2), so one pure function covers the whole loss and
returns every weighted-in term by name for per-head logging. `distillation_loss` is Hinton et al.'s
objective for the knowledge-distillation baselines of Table II.

The training objectives the train step differentiates are built here, outside the step:
`dsop_objective` (Eq. 1 on a model's heads) and `distillation_objective` (a plain student and a
fixed teacher); `with_gradients` turns one into the step's gradient computation, plain or with the
Hessian-vector product AdaHessian needs.
"""

from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from dsop_jax.training import optim

# (params, batch_stats, batch, dropout_rng, loss_args) -> (total, (outputs, new batch_stats, terms)):
# a model's training-mode loss on a batch. `loss_args` are arrays the loss reads besides the model's
# own variables (the distillation teacher's variables), passed to the jitted step as an argument
# rather than baked into the program as constants.
Objective = Callable[..., Tuple[jax.Array, Tuple[Dict[str, Any], Any, Dict[str, jax.Array]]]]


def cross_entropy(*, logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy of integer `labels`, computed in float32, optional smoothing."""
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def head_logits(outputs: Mapping[str, Any]) -> Dict[str, jax.Array]:
  """Flattens model outputs into {head name: logits}: 'logits' plus every auxiliary head."""
  return {'logits': outputs['logits'], **outputs.get('aux_logits', {})}


class Mix(NamedTuple):
  """A mixed batch's second labels and the share of the first: every head's loss is
  lam * CE(labels) + (1 - lam) * CE(partner_labels)."""
  partner_labels: jax.Array
  lam: jax.Array


def mix_batch(batch: Mapping[str, jax.Array], rng: jax.Array, *, mixup_alpha: float,
              cutmix_alpha: float) -> Tuple[Dict[str, jax.Array], Mix]:
  """Mixup or CutMix of a batch with itself reversed (each image with its mirror in the batch, as
  timm pairs them), lam ~ Beta(alpha, alpha); with both alphas > 0, CutMix or Mixup with equal
  probability. CutMix pastes a box of the partner's pixels whose area is 1 - lam of the image
  (lam is then the exact share of the image's own pixels, as the box is clipped at the borders)."""
  images, labels = batch['image'], batch['label']
  partner, partner_labels = jnp.flip(images, 0), jnp.flip(labels, 0)
  choice_rng, mixup_rng, cutmix_rng, box_rng = jax.random.split(rng, 4)
  use_cutmix = jnp.asarray(cutmix_alpha > 0)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.bernoulli(choice_rng)
  mixup_lam = jax.random.beta(mixup_rng, max(mixup_alpha, 1e-3), max(mixup_alpha, 1e-3))
  cut_lam = jax.random.beta(cutmix_rng, max(cutmix_alpha, 1e-3), max(cutmix_alpha, 1e-3))
  h, w = images.shape[1:3]
  cut_h = jnp.round(h * jnp.sqrt(1.0 - cut_lam)).astype(jnp.int32)
  cut_w = jnp.round(w * jnp.sqrt(1.0 - cut_lam)).astype(jnp.int32)
  cy, cx = (jax.random.randint(k, (), 0, n) for k, n in zip(jax.random.split(box_rng), (h, w)))
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = ((rows >= cy - cut_h // 2) & (rows < cy - cut_h // 2 + cut_h)
         & (cols >= cx - cut_w // 2) & (cols < cx - cut_w // 2 + cut_w))
  box_lam = 1.0 - jnp.mean(box.astype(jnp.float32))
  cut = jnp.where(box[None, :, :, None], partner, images)
  mixed = mixup_lam * images + (1.0 - mixup_lam) * partner
  lam = jnp.where(use_cutmix, box_lam, mixup_lam)
  out = {**batch, 'image': jnp.where(use_cutmix, cut, mixed.astype(images.dtype))}
  return out, Mix(partner_labels, lam)


def dsop_loss(*, outputs: Mapping[str, Any], labels: jax.Array, weights: Mapping[str, float],
              label_smoothing: float = 0.0, mix: Optional[Mix] = None
              ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Total DSoP-Net loss (Eq. 1) and its unweighted per-head terms.

  Args:
    outputs: model outputs, {'logits': ..., 'aux_logits': {name: ...}}.
    labels: integer class labels, shape (B,).
    weights: alpha under 'logits' and beta_i under each auxiliary head name; must name exactly the
      heads present in `outputs` (a head with weight 0 is still reported but adds nothing).
    label_smoothing: label smoothing applied to every head.
    mix: for a batch from `mix_batch`, every head scores
      lam * CE(labels) + (1 - lam) * CE(partner labels).

  Returns:
    (total, terms) where terms maps each head name to its cross-entropy L or L_a^i.
  """
  heads = head_logits(outputs)
  if set(heads) != set(weights):
    raise ValueError(f'loss weights name heads {sorted(weights)} but the model outputs '
                     f'{sorted(heads)}; missing: {sorted(set(heads) - set(weights))}, '
                     f'unknown: {sorted(set(weights) - set(heads))}.')
  def criterion(logits):
    loss = cross_entropy(logits=logits, labels=labels, label_smoothing=label_smoothing)
    if mix is None:
      return loss
    return mix.lam * loss + (1.0 - mix.lam) * cross_entropy(
        logits=logits, labels=mix.partner_labels, label_smoothing=label_smoothing)

  terms = {name: criterion(logits) for name, logits in heads.items()}
  total = sum(weights[name] * term for name, term in terms.items())
  return total, terms


def distillation_loss(*, student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                      temperature: float, soft_weight: float
                      ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Hinton et al.'s knowledge distillation (the Table II baselines), in float32.

  (1 - w) * CE(labels, s) + w * T^2 * KL(softmax(t / T) || softmax(s / T)), averaged over the
  batch, with s the student's and t the teacher's logits. The T^2 factor keeps the soft term's
  gradient on the scale of the hard one as T changes. The teacher receives no gradient.

  Args:
    student_logits: (B, K) logits of the network being trained.
    teacher_logits: (B, K) logits of the fixed teacher.
    labels: integer class labels, shape (B,).
    temperature: T > 0.
    soft_weight: w in [0, 1], the weight of the soft-target term.

  Returns:
    (total, {'hard': CE, 'soft': T^2 * KL}).
  """
  if not temperature > 0:
    raise ValueError(f'temperature = {temperature!r} is invalid: must be > 0.')
  if not 0 <= soft_weight <= 1:
    raise ValueError(f'soft_weight = {soft_weight!r} is invalid: must lie in [0, 1].')
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f'student logits {student_logits.shape} and teacher logits '
                     f'{teacher_logits.shape} differ in shape.')
  teacher = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
  student = student_logits.astype(jnp.float32) / temperature
  teacher_logp = jax.nn.log_softmax(teacher)
  kl = jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - jax.nn.log_softmax(student)), axis=-1)
  terms = {'hard': cross_entropy(logits=student_logits, labels=labels),
           'soft': temperature ** 2 * jnp.mean(kl)}
  return (1 - soft_weight) * terms['hard'] + soft_weight * terms['soft'], terms


def _apply_training(model: Any, params: Any, batch_stats: Any, batch: Mapping[str, jax.Array],
                    dropout_rng: jax.Array) -> Tuple[Dict[str, Any], Any]:
  """(outputs, updated BN statistics) of `model` on the batch's images in training mode."""
  outputs, updates = model.apply(
      {'params': params, 'batch_stats': batch_stats}, batch['image'], train=True,
      mutable=['batch_stats'], rngs={'dropout': dropout_rng})
  return outputs, updates['batch_stats']


def dsop_objective(model: Any, loss_weights: Mapping[str, float],
                   label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
                   cutmix_alpha: float = 0.0) -> Objective:
  """Eq. 1 on every head of `model` (alpha/beta_i in `loss_weights`), in training mode; with a
  Mixup or CutMix alpha > 0, on the batch mixed by `mix_batch` (its key from the dropout key)."""

  def objective(params, batch_stats, batch, dropout_rng, loss_args=None):
    del loss_args
    mix = None
    if mixup_alpha > 0 or cutmix_alpha > 0:
      mix_rng, dropout_rng = jax.random.split(dropout_rng)
      batch, mix = mix_batch(batch, mix_rng, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    outputs, new_stats = _apply_training(model, params, batch_stats, batch, dropout_rng)
    total, terms = dsop_loss(outputs=outputs, labels=batch['label'], weights=loss_weights,
                             label_smoothing=label_smoothing, mix=mix)
    return total, (outputs, new_stats, terms)

  return objective


def distillation_objective(model: Any, teacher: Any, temperature: float,
                           soft_weight: float) -> Objective:
  """`distillation_loss` of the branch-less `model` against `teacher`, whose logits (eval mode)
  are computed on the same batch; the teacher's variables are the objective's `loss_args`."""

  def objective(params, batch_stats, batch, dropout_rng, loss_args):
    outputs, new_stats = _apply_training(model, params, batch_stats, batch, dropout_rng)
    teacher_logits, _ = teacher.apply(loss_args, batch['image'], train=False)
    total, parts = distillation_loss(
        student_logits=outputs['logits'], teacher_logits=teacher_logits, labels=batch['label'],
        temperature=temperature, soft_weight=soft_weight)
    return total, (outputs, new_stats, {'logits': parts['hard'], 'distill_soft': parts['soft']})

  return objective


def with_gradients(objective: Objective, hessian: bool = False) -> Callable[..., Tuple[Any, ...]]:
  """The step's gradient computation of `objective`: (params, batch_stats, batch, dropout_rng,
  loss_args) -> (total, aux, gradients, the optimiser's extra arguments).

  With `hessian`, also a Hessian-vector product H z (forward-over-reverse, in the same pass as the
  gradient) with a Rademacher z drawn from the dropout key, whose Hutchinson diagonal estimate is
  the extra argument `hessian_diagonal` of AdaHessian's update (`optim.needs_hessian`).
  """

  def compute(params, batch_stats, batch, dropout_rng, loss_args):
    def grads_and_aux(p):
      (total, aux), grads = jax.value_and_grad(objective, has_aux=True)(
          p, batch_stats, batch, dropout_rng, loss_args)
      return grads, (total, aux)
    if not hessian:
      grads, (total, aux) = grads_and_aux(params)
      return total, aux, grads, {}
    probe = optim.rademacher_like(params, jax.random.fold_in(dropout_rng, 1))
    grads, hessian_z, (total, aux) = jax.jvp(grads_and_aux, (params,), (probe,), has_aux=True)
    return total, aux, grads, {'hessian_diagonal': optim.hutchinson_diagonal(hessian_z)}

  return compute
