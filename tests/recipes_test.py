"""Every config trains what the paper, or the official code it cites, trained: each value pinned,
with its source in the failure message."""

import ast
import functools
import glob
import importlib
import inspect
import os
import re


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dsop_jax.configs import imagenet_efficientnet_b0
from dsop_jax.configs import imagenet_r101
from dsop_jax.configs import imagenet_r50
from dsop_jax.configs import imagenet_seresnext101
from dsop_jax.data import datasets
from dsop_jax.models import cifar_backbones
from dsop_jax.models import covpool
from dsop_jax.models import dsop
from dsop_jax.models import efficientnet
from dsop_jax.models import layers
from dsop_jax.models import registry
from dsop_jax.tools import complexity
from dsop_jax.training import losses
from dsop_jax.training import optim
from dsop_jax.training import sharding
from dsop_jax.training import steps
from tests import conftest
from tests import doc_commands

cifar_resnet20 = importlib.import_module('dsop_jax.configs.cifar_resnet20')


def _recipe(config):
  return (config.train.batch_size, config.train.num_epochs, config.optim.name,
          config.optim.learning_rate, tuple(config.optim.decay_epochs), config.optim.decay_factor,
          config.optim.weight_decay)


def test_two_phase_schedule_of_section_v_c():
  config = imagenet_r50.get_config('two_phase')
  rates = optim.learning_rate_schedule(config, steps_per_epoch=10, num_steps=150)
  assert (config.train.policy, config.train.num_epochs) == ('two_phase', 15.0)
  assert [float(rates(step)) for step in (0, 49, 50, 99, 100, 149)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]), (
          'Section V-C: "Learning rate starts at 0.1, and is reduced to 0.01 and 0.001 after 5 '
          'and 10 epochs, respectively."')


def _first_update(config, params):
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_steps=200)
  zeros = jax.tree.map(jnp.zeros_like, params)
  extra = {'hessian_diagonal': zeros} if optim.needs_hessian(config) else {}
  updates, _ = tx.update(zeros, tx.init(params), params, **extra)
  return updates


def test_adahessian_weight_decay_is_divided_by_the_initial_rate():
  params = {'w': jnp.full((3,), 2.0)}
  config = cifar_resnet20.get_config('cifar10,adahessian')
  # With a zero gradient the first update is the decay alone: lr_0 * (wd / lr_0) * p = wd * p.
  np.testing.assert_allclose(
      _first_update(config, params)['w'], -5e-4 * 2.0, rtol=1e-6,
      err_msg='amirgholami/adahessian image_classification/main.py: "args.weight_decay = '
              'args.weight_decay / args.lr" before Adahessian(lr=args.lr, weight_decay=...)')
  # RAdam's code decays by lr * wd (RAdam/radam.py: p -= weight_decay * lr * p), unchanged.
  config = cifar_resnet20.get_config('cifar10,radam')
  np.testing.assert_allclose(_first_update(config, params)['w'], -0.003 * 1e-4 * 2.0, rtol=1e-6)


@pytest.mark.parametrize('argument, recipe, source', [
    ('cifar10', (256, 160.0, 'sgd', 0.1, (79, 119), 0.1, 5e-4),
     'adahessian image_classification/config/resnet20_cifar10/sgd.sh "--lr 0.1 --optimizer sgd '
     '--depth 20" with main.py defaults batch 256, 160 epochs, MultiStepLR [80, 120] stepped before '
     'each 1-based epoch (decays after 79 and 119 completed epochs), wd 5e-4'),
    ('cifar10,adahessian', (256, 160.0, 'adahessian', 0.15, (79, 119), 0.1, 5e-4),
     'adahessian image_classification/main.py defaults: batch 256, 160 epochs, lr 0.15, '
     'MultiStepLR [80, 120] stepped before each epoch: after 79/119 completed, wd 5e-4'),
    ('cifar10,radam', (128, 164.0, 'radam', 0.003, (81, 122), 0.1, 1e-4),
     'RAdam cifar_imagenet/recipes.md: "cifar.py -a resnet --depth 20 --epochs 164 --schedule 81 '
     '122 --wd 1e-4"'),
])
def test_table_ix_a_rows_use_their_optimiser_papers_recipe(argument, recipe, source):
  config = cifar_resnet20.get_config(argument)
  assert _recipe(config) == recipe, source
  assert config.model.name == 'resnet20', (
      'Both optimiser papers train the post-activation ResNet-20 of bearpaw/pytorch-classification '
      '(models/cifar/resnet.py)')
  assert config.data.dataset == 'cifar10'


# github.com/LiyuanLucasLiu/RAdam cifar_imagenet/recipes.md at 312e3c1, "# ImageNet" (paths cut);
# imagenet.py there: --train-batch default 256, --weight-decay default 1e-4.
RADAM_IMAGENET_RECIPE = {
    'radam': 'python imagenet.py -j 16 -a resnet18 --epochs 90 --schedule 31 61 --gamma 0.1 '
             '--model_name radam_0003 --optimizer radam --lr 0.003 --beta1 0.9 --beta2 0.999',
    'radam_0005': 'python imagenet.py -j 16 -a resnet18 --epochs 90 --schedule 31 61 --gamma 0.1 '
                  '--model_name radam_0005 --optimizer radam --lr 0.005 --beta1 0.9 --beta2 0.999',
}


@pytest.mark.parametrize('option', sorted(RADAM_IMAGENET_RECIPE))
def test_table_ix_b_radam_runs_its_official_imagenet_recipe(option):
  line = RADAM_IMAGENET_RECIPE[option]
  words = line.split()
  value = lambda flag, n=1: words[words.index(flag) + 1:words.index(flag) + 1 + n]  # noqa: E731
  expected = (256, float(value('--epochs')[0]), value('--optimizer')[0], float(value('--lr')[0]),
              tuple(int(e) for e in value('--schedule', 2)), float(value('--gamma')[0]), 1e-4)
  config = importlib.import_module('dsop_jax.configs.imagenet_r18').get_config(f'plain,{option}')
  assert _recipe(config) == expected, f'RAdam recipes.md at 312e3c1: "{line}"'
  defaults = inspect.signature(optim.radam).parameters  # create_optimizer passes no betas.
  assert (defaults['b1'].default, defaults['b2'].default) == (
      float(value('--beta1')[0]), float(value('--beta2')[0]))
  assert config.model.name == 'resnet18'


def test_efficientnet_b0_trains_on_the_codes_the_paper_cites():
  config = imagenet_efficientnet_b0.get_config()
  assert (config.train.batch_size, config.optim.learning_rate, config.train.num_epochs) == (
      768, 0.048, 450.0), 'Section V-C: "mini-batch size ... 768 ... learning rate 0.048"'
  assert config.loss.label_smoothing == 0.1, (
      'timm c2cd1a33 train.py: --smoothing default 0.1, kept by its efficientnet_b0 command; '
      'tensorflow/tpu efficientnet/main.py: label_smoothing default 0.1')
  assert config.optim.ema_decay == 0.9999, 'timm command: --model-ema --model-ema-decay 0.9999'
  assert config.data.inception_crop, (
      'baseline ResNet preprocessing in both cited codes: random area (0.08, 1), aspect (3/4, '
      '4/3), flip (tensorflow/tpu preprocessing.py; timm transforms_imagenet_train)')
  assert imagenet_r50.get_config().data.inception_crop is False  # The ResNets: Section V-B.


def test_resnext29_original_is_the_official_codes_post_activation_command():
  original = importlib.import_module('dsop_jax.configs.cifar_resnext29_8x64d').get_config(
      'cifar100,plain,original')
  specs = registry.create(original.model).backbone.stage_specs()
  assert not any(spec.preact for spec in specs), (
      'facebookresearch/ResNeXt models/resnext.lua has only post-activation bottlenecks')
  assert original.train.batch_size == 128, 'ResNeXt README: "-batchSize 128"'


def test_the_post_activation_resnet20_blocks():
  spec = cifar_backbones.ResNet20().stage_specs()[1]
  assert not spec.preact and spec.block.func.__name__ == 'BasicBlock', (
      'bearpaw models/cifar/resnet.py BasicBlock: conv-bn-relu-conv-bn, += residual, relu')


def test_se_resnext101_teacher_of_section_v_b():
  config = imagenet_seresnext101.get_config()
  source = ('Section V-B: "we reduced the mini-batch size from 1024 to 256 for SE-ResNeXt-101 ... '
            'we reduced the initial learning rate from 0.6 to 0.15", "the final size of a random '
            'image crop to 256 x 256 pixels"')
  assert (config.train.batch_size, config.optim.learning_rate, config.data.image_size) == (
      256, 0.15, 256), source
  assert (config.train.num_epochs, tuple(config.optim.decay_epochs)) == (100.0, (30, 60, 90)), (
      'SENet [36]: "decreased by a factor of 10 every 30 epochs. Models are trained for 100 epochs"')
  assert config.model.last_stride == 2 and config.model.branches.blocks == (0, 0, 0, 0)


def test_resnet101_table_i_column_is_s1_and_the_teacher_s2():
  config = imagenet_r101.get_config()
  assert config.model.last_stride == 1 and config.model.branches.blocks == (0, 0, 0, 0), (
      "Table I's 101-layer column has conv5_x at 14 x 14 (stride 1 in stage 5)")
  report = complexity.report(config)
  assert report['params_test'] == 44_549_160  # Table I: 44.5M.
  assert report['gflops_test'] == pytest.approx(10.01, rel=0.015), "Table I: 10.01 GFLOPs"
  assert imagenet_r101.get_config('s2').model.last_stride == 2  # The distillation teacher.


def test_cifar100_is_normalised_with_its_own_statistics():
  cifar10, cifar100 = (datasets.DATASETS[name] for name in ('cifar10', 'cifar100'))
  assert cifar100.mean == (129.3, 124.1, 112.4) and cifar100.std == (68.2, 65.4, 70.4), (
      "CIFAR-100's per-channel training-set mean and std, not CIFAR-10's")
  assert cifar10.mean != cifar100.mean


def test_preact_bottleneck_strides_its_first_1x1_convolution():
  block = cifar_backbones.PreActBottleneckBlock(filters=8, conv=layers.conv_def(),
                                                norm=layers.norm_def(False), strides=(2, 2))
  x = jnp.zeros((1, 8, 8, 16))
  variables = jax.eval_shape(block.init, jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(block.apply)(variables, x)
  convs = [(e.invars[1].aval.shape[:2], e.params['window_strides']) for e in jaxpr.eqns
           if e.primitive.name == 'conv_general_dilated']
  assert convs[:2] == [((1, 1), (2, 2)), ((3, 3), (1, 1))], (
      'KaimingHe/resnet-1k-layers resnet-pre-act.lua: '
      'Convolution(nInputPlane,nBottleneckPlane,1,1,stride,stride,0,0) then a stride-1 3x3')


def test_efficientnet_end_branch_reads_the_head_convolution():
  config = imagenet_efficientnet_b0.get_config()
  ends = [s for s in registry.branch_specs(config.model) if s.name == 'a_pds7']
  assert [(s.attach, s.stage, s.stage_index, s.num_blocks) for s in ends] == [
      ('head_conv', 'head_conv', 6, 1)], (
          'Section III-A: "we always insert the last auxiliary branch B^N right before the '
          'first-order pooling layer"')
  assert registry.head_names(config.model) == ['logits', 'a_pds4', 'a_pds7']
  report = complexity.report(config)
  assert report['branches']['a_pds7']['attach'] == 'head_conv'
  assert report['params_test'] == 5_288_548  # Detached: the plain network.


@functools.cache
def _efficientnet_params():
  model = efficientnet.EfficientNetB0(num_classes=1000)
  return registry.init_variables(model, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']


def test_efficientnet_initialisation_follows_the_reference():
  params = _efficientnet_params()
  source = ("timm _init_weight_goog / TensorFlow efficientnet_model.py: conv fan-out = "
            "k*k*out_channels // groups, normal(0, sqrt(2 / fan_out)); Linear uniform(+-1/sqrt(out))")
  dw = params['stage6_block1']['dw_conv']['kernel']  # 5x5 depthwise over 112 * 6 = 672 channels.
  assert dw.shape == (5, 5, 1, 672)
  assert float(jnp.std(dw)) == pytest.approx(np.sqrt(2 / 25), rel=0.05), source
  se = params['stage6_block1']['se']
  assert float(jnp.std(se['fc1']['kernel'])) == pytest.approx(np.sqrt(2 / 28), rel=0.1), source
  assert float(jnp.std(se['fc2']['kernel'])) == pytest.approx(np.sqrt(2 / 672), rel=0.05), source
  assert not np.any(se['fc1']['bias']) and not np.any(se['fc2']['bias'])
  head = params['head']['kernel']
  assert float(jnp.max(jnp.abs(head))) <= 1 / np.sqrt(1000), source
  assert float(jnp.std(head)) == pytest.approx(1 / np.sqrt(3000), rel=0.05), source
  # Other convolutions keep fan-out k*k*out: the head conv (1x1, 1280 outputs).
  assert float(jnp.std(params['head_conv']['kernel'])) == pytest.approx(np.sqrt(2 / 1280),
                                                                        rel=0.05)


def test_mpn_cov_eigenvalue_floor_is_the_documented_deviation():
  """The official MPN-COV keeps the eigenvalues above float epsilon times the largest and fills
  only kept x kept pairs in its backward pass; dsop_jax keeps those above 1e-5 times the largest
  and uses the exact derivative of what it computes (reasons in covpool.eig_sqrtm's docstring)."""
  assert inspect.signature(covpool.eig_sqrtm).parameters['rel_eps'].default == 1e-5
  assert 'Deviation from the official MPN-COV code' in covpool.eig_sqrtm.__doc__
  sigma = jnp.diag(jnp.asarray([1.0, 2e-5, 5e-6, 0.0]))[None]
  root = np.diag(np.asarray(covpool.eig_sqrtm(sigma))[0])
  np.testing.assert_allclose(root, [1.0, np.sqrt(2e-5), 0.0, 0.0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('name, family', [
    ('cifar_resnet110', 'preact'), ('cifar_resnet164', 'preact'), ('cifar_wrn22_10', 'wrn'),
    ('cifar_wrn28_10', 'wrn'), ('cifar_resnext29_8x64d', 'resnext'),
    ('cifar_resnext29_16x64d', 'resnext')])
def test_cifar_baselines_train_on_their_own_papers_recipe(name, family):
  module = importlib.import_module(f'dsop_jax.configs.{name}')
  original = module.get_config('cifar100,plain,original')
  expected = {
      'preact': (128, 164.0, 'sgd', 0.1, (80, 121), 0.1, 1e-4),
      'wrn': (128, 200.0, 'sgd', 0.1, (59, 119, 159), 0.2, 5e-4),
      'resnext': (128, 300.0, 'sgd', 0.1, (147, 222), 0.1, 5e-4)}[family]
  sources = {'preact': 'fb.resnet.torch train.lua/opts.lua: nesterov, x0.1 from epoch 81 and 122, '
                       '164 epochs, wd 1e-4',
             'wrn': 'wide-residual-networks scripts/train_cifar.sh: epoch_step {60,120,160}, '
                    'max_epoch 200, ratio 0.2, nesterov=true',
             'resnext': 'facebookresearch/ResNeXt: -weightDecay 5e-4 -batchSize 128 -nEpochs 300, '
                        'x0.1 once epoch/nEpochs > 0.49 and > 0.74, nesterov'}[family]
  assert _recipe(original) == expected and original.optim.nesterov, sources
  assert original.model.branches.pattern == ''
  dsop_schedule = module.get_config('cifar100,plain')
  assert not dsop_schedule.optim.nesterov and _recipe(dsop_schedule) != expected
  with pytest.raises(ValueError, match="option 'original' is invalid"):
    cifar_resnet20.get_config('cifar10,original')  # Table IX(a) rows are already originals.


def _bn_model(group_size):
  """A tiny DSoP ResNet with branches after stages 2 and 5 and BN statistics in groups of
  `group_size` (0: the whole batch)."""
  backbone = conftest.TinyResNet(bn_group_size=group_size)
  specs = registry.layout_branches(backbone.stage_specs(), conftest.branches_config(
      blocks=(1, 0, 0, 1)))
  return dsop.DSoPNet(backbone=backbone, branches=tuple(specs), num_classes=5,
                      bn_group_size=group_size)


def _bn_step(group_size, state, batch):
  """One real train step of `_bn_model(group_size)` from `state`, jitted over a 1-device mesh."""
  step = jax.jit(steps.make_train_step(losses.dsop_objective(
      _bn_model(group_size), {'logits': 1.0, 'a_pds2': 1.0, 'a_pds5': 1.0}), optax.sgd(0.1)))
  with jax.set_mesh(sharding.create_mesh()):
    return step(state, batch, jax.random.key(1))[0]


def test_bn_statistics_groups_of_the_paper():
  for name in ('imagenet_r18', 'imagenet_r50', 'imagenet_seresnext101', 'imagenet_r101'):
    assert importlib.import_module(f'dsop_jax.configs.{name}').get_config().model.bn_group_size == 32, (
        'Section V-B: PyTorch DataParallel on 8 GPUs, mini-batch 256: 32 images per BN statistics')
  assert imagenet_efficientnet_b0.get_config().model.bn_group_size == 96, (
      'Section V-B: one 8-GPU server; batch 768 / 8 GPUs')
  model = _bn_model(0)  # The variables do not depend on the grouping.
  state = registry.jit_init(steps.state_init_fn(model, optax.sgd(0.1), 32))(jax.random.key(0))
  rng = np.random.default_rng(0)
  shift = np.repeat([0.0, 3.0, -3.0, 6.0], 2)[:, None, None, None]  # Pairs far apart.
  batch = {'image': jnp.asarray(rng.normal(size=(8, 32, 32, 3)) + shift, jnp.float32),
           'label': jnp.asarray(np.arange(8) % 5, jnp.int32), 'mask': jnp.ones(8, bool)}
  _, inter = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                              mutable=['intermediates']))(
      {'params': state.params, 'batch_stats': state.batch_stats}, batch['image'])
  stem = np.asarray(inter['intermediates']['backbone']['conv_init']['__call__'][0], np.float64)
  whole = _bn_step(0, state, batch)
  same = _bn_step(8, state, batch)  # One group of the whole batch: nothing changes, bit for bit.
  for a, b in zip(jax.tree.leaves((whole.params, whole.batch_stats)),
                  jax.tree.leaves((same.params, same.batch_stats))):
    np.testing.assert_array_equal(a, b)
  grouped = _bn_step(2, state, batch)
  # The stem BN's running statistics after one step: 0.9 * initial + 0.1 * the mean over the 4
  # groups of 2 images of each group's mean and (biased) variance.
  groups = stem.reshape(4, 2, *stem.shape[1:])
  means, variances = groups.mean(axis=(1, 2, 3)), groups.var(axis=(1, 2, 3))
  stats = grouped.batch_stats['backbone']['bn_init']
  np.testing.assert_allclose(stats['mean'], 0.1 * means.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * variances.mean(0), rtol=1e-5)
  whole_var = whole.batch_stats['backbone']['bn_init']['var']
  np.testing.assert_allclose(whole_var, 0.9 + 0.1 * stem.var(axis=(0, 1, 2)), rtol=1e-5)
  # Within groups the spread is smaller (total variance = within + between groups).
  assert np.all(stats['var'] < whole_var - 0.01), (stats['var'], whole_var)


def _docstring_commands():
  found = []
  for path in sorted(glob.glob(os.path.join(doc_commands.ROOT, 'configs', '*.py'))):
    name = os.path.basename(path)
    docstring = ast.get_docstring(ast.parse(open(path).read()), clean=False) or ''
    found += doc_commands.commands(docstring, f'configs/{name}', own_config=f'configs/{name}')
  return found


DOCSTRING_COMMANDS = _docstring_commands()


@pytest.mark.parametrize('command', DOCSTRING_COMMANDS, ids=lambda c: c.where)
def test_every_command_in_a_config_docstring_builds_its_recipe(command):
  """Each `--config=...` command of a config's docstring parses as `python -m dsop_jax.main` would
  parse it (every override an existing field of the right type), the config validates, and its
  step schedule decays within its epochs (not a recipe's decay points left for another length)."""
  config = doc_commands.build(command)
  registry.validate_model_config(config.model)
  registry.validate_loss_config(config)
  optim.validate_optim_config(config)
  assert not doc_commands.unreached_decays(config), (
      f'{command.where}: {command.argv()} trains {config.train.num_epochs} epochs but decays the '
      f'rate at epochs {tuple(config.optim.decay_epochs)}')


def test_docstring_commands_cover_the_documented_recipes():
  """The commands the docstrings show: the two-phase command of Table III decays after 5 and 10 of
  15 epochs; the distillation teacher named for ResNet-101 is the standard (-s2) network."""
  assert len(DOCSTRING_COMMANDS) > 40
  (two_phase,) = [c for c in DOCSTRING_COMMANDS
                  if c.where.startswith('configs/imagenet_r50.py') and 'two_phase' in str(c)]
  config = doc_commands.build(two_phase)
  assert (config.train.policy, config.train.num_epochs, tuple(config.optim.decay_epochs)) == (
      'two_phase', 15.0, (5, 10)), 'Section V-C: "reduced to 0.01 and 0.001 after 5 and 10 epochs"'
  with pytest.raises(AssertionError, match='decays the rate at epochs'):  # The old command.
    test_every_command_in_a_config_docstring_builds_its_recipe(doc_commands.Command(
        'old', 'configs/imagenet_r50.py', (('train.policy', 'two_phase'),
                                           ('train.backbone_checkpoint', 'DIR'),
                                           ('train.num_epochs', '15'))))
  docstring = imagenet_r50.__doc__
  teacher = re.search(r'from ResNet-101 \((imagenet_r101\.py[:\w]*)', docstring).group(1)
  r101 = doc_commands.build(doc_commands.Command('teacher', f'configs/{teacher}', ()))
  assert (r101.model.name, r101.model.last_stride) == ('resnet101', 2), (
      "Table II's distillation teacher is the standard ResNet-101")
  with pytest.raises(AttributeError, match='Did you mean "blocks"'):  # A misspelt field.
    doc_commands.build(doc_commands.Command('typo', 'configs/imagenet_r50.py',
                                            (('model.branches.blok', '(1,1,1,1)'),)))
