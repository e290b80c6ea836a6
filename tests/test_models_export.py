"""`jax.export` with symbolic batch, image and sequence sizes, in float32 and bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from resnet_ln.models import BottleneckBlock
from resnet_ln.models import CharLM
from resnet_ln.models import CifarResNet
from resnet_ln.models import ResNet
from resnet_ln.models import SequenceClassifier

DTYPES = [pytest.param(jnp.float32, id="float32"), pytest.param(jnp.bfloat16, id="bfloat16")]


def _export(model, example_args, symbolic_args, **apply_kwargs):
  """Exports `model.apply` for the symbolic argument shapes; returns (exported, variables)."""
  variables = jax.jit(lambda *args: model.init(jax.random.key(0), *args, **apply_kwargs))(
      *example_args)
  apply = jax.jit(lambda v, *args: model.apply(v, *args, **apply_kwargs))
  return export.export(apply)(variables, *symbolic_args), variables, apply


def _assert_exported_matches_jit(exported, variables, apply, *args):
  np.testing.assert_allclose(
      np.asarray(exported.call(variables, *args), np.float32),
      np.asarray(apply(variables, *args), np.float32), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model", [
    pytest.param(CifarResNet(8), id="cifar_option_a"),
    pytest.param(ResNet(stage_sizes=(1, 1), block_cls=BottleneckBlock, num_filters=8,
                        num_classes=5), id="imagenet_bottleneck"),
])
def test_resnets_export_with_symbolic_batch_height_and_width(model, dtype):
  model = model.clone(dtype=dtype)
  images = jax.ShapeDtypeStruct(export.symbolic_shape("b, h, w, 3"), dtype)
  exported, variables, apply = _export(
      model, (jnp.zeros((1, 32, 32, 3), dtype),), (images,), train=False)
  assert exported.out_avals[0].dtype == jnp.float32
  assert str(exported.out_avals[0].shape) == f"(b, {model.num_classes})"
  x = jax.random.normal(jax.random.key(1), (2, 20, 28, 3), dtype)
  _assert_exported_matches_jit(exported, variables, apply, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_char_lm_exports_with_symbolic_batch_and_time(dtype):
  model = CharLM(vocab_size=7, embed_dim=4, features=8, num_layers=2, dtype=dtype)
  tokens = jax.ShapeDtypeStruct(export.symbolic_shape("b, t"), jnp.int32)
  exported, variables, apply = _export(model, (jnp.zeros((1, 3), jnp.int32),), (tokens,))
  assert str(exported.out_avals[0].shape) == "(b, t, 7)"
  _assert_exported_matches_jit(
      exported, variables, apply, jax.random.randint(jax.random.key(1), (3, 9), 0, 7))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequence_classifier_exports_with_symbolic_batch_time_and_lengths(dtype):
  model = SequenceClassifier(num_classes=3, features=8, bidirectional=True, dtype=dtype)
  b, t = export.symbolic_shape("b, t")
  inputs = jax.ShapeDtypeStruct((b, t, 4), dtype)
  lengths = jax.ShapeDtypeStruct((b,), jnp.int32)
  exported, variables, apply = _export(
      model, (jnp.zeros((1, 3, 4), dtype), jnp.array([3])), (inputs, lengths))
  assert str(exported.out_avals[0].shape) == "(b, 3)"
  x = jax.random.normal(jax.random.key(1), (3, 7, 4), dtype)
  _assert_exported_matches_jit(exported, variables, apply, x, jnp.array([7, 2, 9]))
