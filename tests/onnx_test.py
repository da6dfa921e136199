"""ONNX export: each backbone family's deployed network, converted from its jaxpr, run by
onnxruntime at two batch sizes, gives JAX's logits within 1e-4; what has no translation is named."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest

from dsop_jax.configs import imagenet_r18
from dsop_jax.deploy import onnx_export
from dsop_jax.models import efficientnet
from dsop_jax.models import registry
from dsop_jax.models import resnet
from tests import conftest
from tests import export_test

NETWORKS = {
    # 7x7 stem with max pooling, basic blocks, GAP, dense.
    'resnet_basic': lambda: (conftest.TinyResNet(), 32),
    # Bottlenecks with grouped 3x3 convolutions and squeeze-and-excitation (SE-ResNeXt), stride 1.
    'seresnext': lambda: (resnet.ResNet(stage_sizes=(1, 1, 1, 1), block_cls=functools.partial(
        resnet.BottleneckBlock, groups=4, width_per_group=16, se_reduction=4), num_filters=8,
        num_classes=7, last_stride=1), 32),
    # Pre-activation CIFAR ResNet: BN-ReLU-conv order, no stem pooling.
    'preact_cifar': lambda: (conftest.TinyPreAct(), 32),
    # EfficientNet: depthwise convolutions, swish, squeeze-and-excitation.
    'efficientnet': lambda: (efficientnet.EfficientNet(
        stage_config=((1, 3, 1, 8, 1), (6, 3, 2, 16, 2)), head_filters=32, num_classes=10), 32),
}


def _session(model):
  return onnxruntime.InferenceSession(model.SerializeToString(),
                                      providers=['CPUExecutionProvider'])


@pytest.mark.parametrize('name', sorted(NETWORKS))
def test_onnxruntime_gives_the_jax_logits_at_any_batch_size(name):
  module, size = NETWORKS[name]()
  x = np.random.default_rng(0).normal(size=(3, size, size, 3)).astype(np.float32)
  variables = export_test._randomise(
      registry.init_variables(module, jax.random.key(0), jnp.asarray(x[:1])), seed=1)
  forward = lambda images: module.apply(variables, images, train=False)[0]  # noqa: E731
  model = onnx_export.convert(forward, (size, size, 3))
  assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [
      'batch', size, size, 3]
  session = _session(model)
  expected = np.asarray(jax.jit(forward)(x))  # Inference: each image's logits on their own.
  for batch in (1, 3):
    (got,) = session.run(None, {'images': x[:batch]})
    assert got.shape == expected[:batch].shape
    np.testing.assert_allclose(got, expected[:batch], rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_a_primitive_without_translation_is_named():
  # The second-order head (Table XI) keeps the upper triangle of Sigma^(1/2), indexed through a
  # cumsum, which the converter does not translate.
  config = imagenet_r18.get_config('isqrt_cov')
  config.model.stage_sizes = (1, 1, 1, 1)
  module = registry.create_backbone(config.model)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                 train=False))
  variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
  with pytest.raises(NotImplementedError, match=r"the JAX primitive '\w+' has no ONNX translation "
                                                r"here; export --format=stablehlo runs"):
    onnx_export.convert(lambda x: module.apply(variables, x, train=False)[0], (32, 32, 3))
