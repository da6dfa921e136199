"""Building models from `config.model`: the backbone registry, branch layouts and their validation.

- `create(model_config)`: the DSoP-Net training model (`dsop.DSoPNet`).
- `create_backbone(model_config)`: the plain first-order network, which accepts detached variables.
- `branch_specs(model_config)`: the branches a config asks for, with the paper's names.
- `head_spec(model_config)`: the second-order head that replaces GAP + FC (`config.model.head`),
  or None for the first-order network.
- `loss_weights(config)`: alpha and beta_i of Eq. 1 for every head, keyed like the model outputs.

The builders take a validated config: `validate_model_config` (config.model) and
`validate_loss_config` (config.loss) raise ValueError naming the field; each command line that
builds a model calls them once, before anything is built.

`config.model.head.pool` 'isqrt_cov' or 'mpn_cov' builds the second-order network (Table II,
Table XI; `gsop.py`); the supervised side branches of its PSDR count among the branches (named
gsop_psdr<i>, weighted like the main head) and are detached like them.

Branch layouts come in two forms (exactly one is set, or neither for the plain network):
- `branches.blocks`: one branch at the end of each stage with that many S_a blocks, 0 for none
  (Table I: (2, 2, 2, 2) for ResNet-18; Table X: (16, 0, 0, 0), (8, 8, 0, 0), ...). Names: a_pds<s>.
- `branches.pattern`: the stage specification of Table IV, the same for every stage, one entry per
  backbone block: '[0,0,3]x6' puts a 3-block branch after every third block. Names: a_pds<s>_<b>.
"""

import functools
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from dsop_jax.models import branches as branches_lib
from dsop_jax.models import cifar_backbones
from dsop_jax.models import dsop
from dsop_jax.models import efficientnet
from dsop_jax.models import gsop
from dsop_jax.models import resnet
from dsop_jax.models import stages

# name -> (constructor, whether it is an ImageNet network that takes `last_stride` and can carry a
# second-order head).
BACKBONES: Dict[str, Tuple[Callable[..., Any], bool]] = {
    'resnet18': (resnet.ResNet18, True),
    'resnet34': (resnet.ResNet34, True),
    'resnet50': (resnet.ResNet50, True),
    'resnet101': (resnet.ResNet101, True),
    'resnet152': (resnet.ResNet152, True),
    'seresnext101_32x4d': (resnet.SEResNeXt101_32x4d, True),
    'efficientnet_b0': (efficientnet.EfficientNetB0, True),
    'resnet20': (cifar_backbones.ResNet20, False),
    'preact_resnet20': (cifar_backbones.PreActResNet20, False),
    'preact_resnet110': (cifar_backbones.PreActResNet110, False),
    'preact_resnet164': (cifar_backbones.PreActResNet164, False),
    'wrn22_10': (cifar_backbones.WRN22_10, False),
    'wrn28_10': (cifar_backbones.WRN28_10, False),
    'resnext29_8x64d': (cifar_backbones.ResNeXt29_8x64d, False),
    'resnext29_16x64d': (cifar_backbones.ResNeXt29_16x64d, False),
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# The reduction layers of branches and heads use the backbone's activation (Section V-C: "conv1x1,
# BN and swish" for EfficientNet); ReLU elsewhere.
DR_ACTIVATIONS = {'efficientnet_b0': 'swish'}
_PATTERN = re.compile(r'^\[(\d+(?:,\d+)*)\](?:x(\d+))?$')
# Initialisation programs run once, so they are compiled at LLVM's lighter optimisation level: on
# the 2-core CPU the quickstart model's training state compiled in 3.5 s instead of 11.5 s, with
# bit-identical values (its random bits are integer arithmetic; models_test checks the equality).
# The other two options are XLA's defaults, kept whatever XLA_FLAGS say: the test suite's flags
# turn them off for its short training programs, and ResNet-50-s1 with its branches (184M
# parameters) then took 24.6 s to initialise instead of 18.5 s (2-core x86 CPU).
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1,
                         'xla_llvm_disable_expensive_passes': False,
                         'xla_cpu_use_fusion_emitters': True}


def _fail(field: str, value: Any, allowed: str) -> None:
  raise ValueError(f'config.{field} = {value!r} is invalid: {allowed}.')


def parse_pattern(pattern: str) -> List[int]:
  """Expands a Table IV stage specification: '[0,0,3]x6' -> [0, 0, 3] * 6."""
  match = _PATTERN.match(pattern.replace(' ', ''))
  if not match:
    _fail('model.branches.pattern', pattern,
          "expected '[n,n,...]' optionally followed by 'xK', e.g. '[0,0,3]x6'")
  return [int(n) for n in match.group(1).split(',')] * int(match.group(2) or 1)


def create_backbone(model_config: ml_collections.ConfigDict) -> Any:
  """The plain first-order network of a validated config (what is deployed after detaching)."""
  return _backbone(model_config)


def _plain_backbone(model_config: ml_collections.ConfigDict) -> Any:
  constructor, imagenet = BACKBONES[model_config.name]
  kwargs = dict(num_classes=model_config.num_classes, dtype=DTYPES[model_config.dtype],
                bn_group_size=model_config.bn_group_size)
  if imagenet:
    kwargs['last_stride'] = model_config.last_stride
  backbone = constructor(**kwargs)
  sizes = tuple(model_config.stage_sizes)
  return _with_stage_sizes(backbone, sizes) if sizes else backbone


def _with_stage_sizes(backbone: Any, sizes: Tuple[int, ...]) -> Any:
  """`backbone` with `sizes[i]` blocks in stage i (`config.model.stage_sizes`)."""
  if isinstance(backbone, efficientnet.EfficientNet):
    return backbone.clone(stage_config=tuple(
        stage[:4] + (n,) for stage, n in zip(backbone.stage_config, sizes)))
  return backbone.clone(stage_sizes=sizes)


def _backbone(model_config: ml_collections.ConfigDict) -> Any:
  backbone = _plain_backbone(model_config)
  head = head_spec(model_config, backbone)
  if head is None:
    return backbone
  return backbone.clone(head=functools.partial(gsop.GSoPHead, head))


def _stage_specs(model_config: ml_collections.ConfigDict) -> List[stages.StageSpec]:
  return _plain_backbone(model_config).stage_specs()


def head_spec(model_config: ml_collections.ConfigDict, backbone: Optional[Any] = None
              ) -> Optional[branches_lib.BranchSpec]:
  """The second-order head of `config.model.head` on what the backbone's head pools (a ResNet's
  last stage, EfficientNet's head conv), or None (GAP + FC).

  """
  head = model_config.head
  if head.pool == 'gap':
    return None
  backbone = backbone or _plain_backbone(model_config)
  stage_list = backbone.stage_specs()
  return branches_lib.BranchSpec(
      name=gsop.NAME, stage=stage_list[-1].name, stage_index=len(stage_list) - 1,
      attach=backbone.head_input()[0], num_blocks=0, pool=head.pool, pool_channels=head.channels,
      reduction=head.reduction, psdr_delta=head.psdr_delta, psdr_aux=head.psdr_aux,
      num_iters=head.num_iters, dropout=head.dropout, activation=_activation(model_config))


def _activation(model_config: ml_collections.ConfigDict) -> str:
  return DR_ACTIVATIONS.get(model_config.name, 'relu')


def branch_specs(model_config: ml_collections.ConfigDict) -> List[branches_lib.BranchSpec]:
  """The auxiliary branches of the config, ordered from the input to the output: the DSoP
  branches, then the side branches of a PSDR second-order head."""
  backbone = _plain_backbone(model_config)
  end = getattr(backbone, 'branch_end_stage', lambda: None)()
  specs = layout_branches(backbone.stage_specs(), model_config.branches,
                          _activation(model_config), end)
  head = head_spec(model_config, backbone)
  if head is not None:
    specs += gsop.side_specs(head, backbone.head_input()[1])
  return specs


def layout_branches(stage_list: Sequence[stages.StageSpec], cfg: ml_collections.ConfigDict,
                    activation: str = 'relu', end: Optional[stages.StageSpec] = None
                    ) -> List[branches_lib.BranchSpec]:
  """Expands a `config.model.branches` layout over a backbone's stages into branch specs.

  `end`: where the last stage's `blocks` branch reads and takes its blocks from, when the
  first-order pooling does not read the last stage's output (EfficientNet's head conv).
  """
  specs = []
  for index, stage in enumerate(stage_list):
    number = int(stage.name[len('stage'):])
    if cfg.blocks and end is not None and index == len(stage_list) - 1:
      places, stage = [(cfg.blocks[index], f'a_pds{number}', end.name)], end
    elif cfg.blocks:
      places = [(cfg.blocks[index], f'a_pds{number}', stage.name)]
    elif cfg.pattern:
      places = [(n, f'a_pds{number}_{b + 1}', stages.block_feature_name(stage.name, b + 1))
                for b, n in enumerate(parse_pattern(cfg.pattern))]
    else:
      places = []
    for num_blocks, name, attach in places:
      if not num_blocks:
        continue
      specs.append(branches_lib.BranchSpec(
          name=name, stage=stage.name, stage_index=index, attach=attach, num_blocks=num_blocks,
          pool=cfg.pool, pool_channels=cfg.channels[index], reduction=cfg.reduction[index],
          psdr_delta=cfg.psdr_delta, psdr_aux=cfg.psdr_aux, num_iters=cfg.num_iters,
          dropout=cfg.dropout, activation=activation))
  return specs


def create(model_config: ml_collections.ConfigDict) -> dsop.DSoPNet:
  """The DSoP-Net training model of a validated config: backbone under 'backbone', each branch under
  its own name."""
  return dsop.DSoPNet(backbone=_backbone(model_config), branches=tuple(branch_specs(model_config)),
                      num_classes=model_config.num_classes, dtype=DTYPES[model_config.dtype],
                      bn_group_size=model_config.bn_group_size)


def head_names(model_config: ml_collections.ConfigDict) -> List[str]:
  """Every supervised head: 'logits' (main) and each auxiliary output, in model order."""
  return ['logits'] + [name for _, names in _branch_heads(model_config) for name in names]


def _branch_heads(model_config: ml_collections.ConfigDict
                  ) -> List[Tuple[branches_lib.BranchSpec, List[str]]]:
  """Every branch with the names of the heads it outputs (its PSDR side branches, then its own)."""
  stage_channels = {name: s.channels for name, s in
                    stages.branch_block_specs(_plain_backbone(model_config)).items()}
  return [(spec, branches_lib.side_branch_names(spec, stage_channels[spec.stage]) + [spec.name])
          for spec in branch_specs(model_config)]


def loss_weights(config: ml_collections.ConfigDict) -> Dict[str, float]:
  """alpha for 'logits' and beta of the branch's stage for every auxiliary head (Eq. 1), of a
  validated config."""
  weights = {'logits': float(config.loss.alpha)}
  for spec, names in _branch_heads(config.model):
    weight = config.loss.alpha if spec.weight == 'alpha' else config.loss.betas[spec.stage_index]
    weights.update({name: float(weight) for name in names})
  return weights


def validate_loss_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of `config.loss` (of a valid config.model)."""
  num_stages = len(_stage_specs(config.model))
  betas = tuple(config.loss.betas)
  if len(betas) != num_stages or any(b < 0 for b in betas):
    _fail('loss.betas', betas, f'need {num_stages} non-negative weights, one per stage')
  if config.loss.alpha < 0:
    _fail('loss.alpha', config.loss.alpha, 'must be >= 0')
  if not 0.0 <= config.loss.label_smoothing < 1.0:
    _fail('loss.label_smoothing', config.loss.label_smoothing, 'must lie in [0, 1)')
  for field in ('mixup_alpha', 'cutmix_alpha'):
    if not config.loss[field] >= 0:
      _fail(f'loss.{field}', config.loss[field], 'must be >= 0 (0 = off)')


def validate_model_config(model_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of `config.model` and what is allowed."""
  m = model_config
  if m.name not in BACKBONES:
    _fail('model.name', m.name, f'allowed: {", ".join(BACKBONES)}')
  if not isinstance(m.num_classes, int) or m.num_classes < 1:
    _fail('model.num_classes', m.num_classes, 'must be a positive integer')
  if m.dtype not in DTYPES:
    _fail('model.dtype', m.dtype, f'allowed: {", ".join(DTYPES)}')
  group = m.bn_group_size
  if not isinstance(group, int) or isinstance(group, bool) or group < 0:
    _fail('model.bn_group_size', group, 'must be an integer >= 0 (examples per BatchNorm '
          'statistics group in training; 0 = the whole global batch)')
  if BACKBONES[m.name][1] and m.last_stride not in (1, 2):  # Absent: the standard 2.
    _fail('model.last_stride', m.last_stride, "allowed: 2 (standard, 's2') or 1 ('s1')")
  sizes = m.stage_sizes or ()
  if sizes:
    own = BACKBONES[m.name][0](num_classes=m.num_classes).stage_specs()
    if len(sizes) != len(own) or any(not isinstance(n, int) or n < 1 for n in sizes):
      _fail('model.stage_sizes', sizes, f'need {len(own)} positive integers, one per stage of '
            f'{m.name} (its own: {tuple(s.num_blocks for s in own)}), or () for those')
  stage_list = _stage_specs(m)
  num_stages = len(stage_list)
  b = m.branches
  if b.blocks and b.pattern:
    _fail('model.branches.pattern', b.pattern, 'set either branches.blocks or branches.pattern')
  if b.blocks and (len(b.blocks) != num_stages or any(
      not isinstance(n, int) or n < 0 for n in b.blocks)):
    _fail('model.branches.blocks', b.blocks,
          f'need {num_stages} non-negative integers, one per stage of {m.name}')
  if b.pattern:
    expanded = parse_pattern(b.pattern)
    for stage in stage_list:
      if len(expanded) != stage.num_blocks:
        _fail('model.branches.pattern', b.pattern,
              f'it expands to {len(expanded)} entries but {stage.name} of {m.name} has '
              f'{stage.num_blocks} blocks')
  if len(b.channels) != num_stages or any(not isinstance(c, int) or c < 1 for c in b.channels):
    _fail('model.branches.channels', b.channels,
          f'need {num_stages} positive integers, one per stage of {m.name}')
  if b.pool not in branches_lib.POOLS:
    _fail('model.branches.pool', b.pool, f'allowed: {", ".join(branches_lib.POOLS)}')
  if len(b.reduction) != num_stages or any(r not in branches_lib.REDUCTIONS for r in b.reduction):
    _fail('model.branches.reduction', b.reduction,
          f'need {num_stages} entries, one per stage of {m.name}, each one of '
          f'{", ".join(branches_lib.REDUCTIONS)}')
  if not isinstance(b.psdr_aux, bool):
    _fail('model.branches.psdr_aux', b.psdr_aux, 'allowed: True, False')
  _validate_pooling('model.branches', b)
  _validate_head(m)


def _validate_pooling(prefix: str, c: ml_collections.ConfigDict) -> None:
  """The fields a branch and the second-order head share: PSDR's delta, iterations, dropout."""
  if not 0.0 < c.psdr_delta < 1.0:
    _fail(f'{prefix}.psdr_delta', c.psdr_delta, 'must lie in the open interval (0, 1)')
  if not isinstance(c.num_iters, int) or c.num_iters < 1:
    _fail(f'{prefix}.num_iters', c.num_iters, 'must be an integer >= 1')
  if not 0.0 <= c.dropout < 1.0:
    _fail(f'{prefix}.dropout', c.dropout, 'must lie in [0, 1)')


def _validate_head(m: ml_collections.ConfigDict) -> None:
  h = m.head
  if h.pool not in ('gap',) + gsop.POOLS:
    _fail('model.head.pool', h.pool, f'allowed: gap (first-order), {", ".join(gsop.POOLS)}')
  if h.pool == 'gap':
    return
  imagenet = [name for name, (_, is_imagenet) in BACKBONES.items() if is_imagenet]
  if m.name not in imagenet:
    _fail('model.head.pool', h.pool, f'a second-order head is built on the ImageNet networks '
          f'({", ".join(imagenet)}), not on {m.name}; use gap')
  if not isinstance(h.channels, int) or h.channels < 1:
    _fail('model.head.channels', h.channels, 'must be a positive integer')
  if h.reduction not in branches_lib.REDUCTIONS:
    _fail('model.head.reduction', h.reduction, f'allowed: {", ".join(branches_lib.REDUCTIONS)}')
  _validate_pooling('model.head', h)


def jit_init(fn: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
  """`jax.jit(fn, **jit_kwargs)` for a one-off initialiser, compiled with INIT_COMPILER_OPTIONS."""
  return jax.jit(fn, compiler_options=INIT_COMPILER_OPTIONS, **jit_kwargs)


def init_variables(module: Any, rng: jax.Array, example: jax.Array) -> Dict[str, Any]:
  """`module.init(rng, example, train=False)` as one compiled program (`jit_init`); run eagerly,
  flax would compile every layer and every initialiser call on its own."""
  return jit_init(lambda r, x: module.init(r, x, train=False))(rng, example)


def count_params(params: Mapping[str, Any]) -> int:
  """Number of scalars in a parameter tree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
