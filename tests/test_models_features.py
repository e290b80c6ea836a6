"""ResNet backbones: `features`, `num_classes=None`, and stochastic depth."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_ln.models import BasicBlock
from resnet_ln.models import CifarResNet
from resnet_ln.models import get_model


def _images(batch=4, size=16, channels=3, seed=0):
  shape = (batch, size, size, channels)
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope="module")
def cifar8():
  """The smallest CIFAR ResNet and its initial variables (with a head)."""
  model = CifarResNet(8)
  return model, jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), _images())


# ---------------------------------------------------------------- features

# One net of each registered family: (channels of stem, stage1, ...), (strides likewise).
_IMAGENET_STRIDES = (4, 4, 8, 16, 32)
FAMILIES = [
    ("resnet18", 224, (64, 64, 128, 256, 512), _IMAGENET_STRIDES),
    ("resnet50", 224, (64, 256, 512, 1024, 2048), _IMAGENET_STRIDES),
    ("plain34", 224, (64, 64, 128, 256, 512), _IMAGENET_STRIDES),
    ("cifar_resnet20", 32, (16, 16, 32, 64), (1, 1, 2, 4)),
    ("cifar_plain20", 32, (16, 16, 32, 64), (1, 1, 2, 4)),
]


@pytest.mark.parametrize("name, size, channels, strides", FAMILIES)
def test_features_are_the_stem_and_every_stage_at_their_strides(name, size, channels, strides):
  model = get_model(name)
  images = jnp.zeros((2, size, size, 3))

  def features():
    variables = model.init(jax.random.key(0), images)
    return model.apply(variables, images, method="features")

  shapes = jax.eval_shape(features)
  names = ["stem"] + [f"stage{i}" for i in range(1, len(channels))]
  assert sorted(shapes) == sorted(names)
  for key, c, s in zip(names, channels, strides):
    assert shapes[key].shape == (2, size // s, size // s, c), key
    assert shapes[key].dtype == jnp.float32


def test_features_use_the_classifier_parameters_and_the_head_sees_the_last_stage_pooled(cifar8):
  model, variables = cifar8
  images = _images()
  features = jax.jit(lambda v, x: model.apply(v, x, method="features"))(variables, images)
  logits = jax.jit(lambda v, x: model.apply(v, x))(variables, images)
  pooled = jnp.mean(features["stage3"], axis=(1, 2))
  head = variables["params"]["head"]
  np.testing.assert_allclose(logits, pooled @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)


def test_a_backbone_without_head_returns_pooled_features_and_takes_classifier_weights(cifar8):
  model, variables = cifar8
  backbone = CifarResNet(8, num_classes=None)
  images = _images()
  shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0), images))
  assert "head" not in shapes["params"]
  classifier_params = {k: v for k, v in variables["params"].items() if k != "head"}
  assert jax.tree.structure(shapes["params"]) == jax.tree.structure(classifier_params)

  pooled = jax.jit(lambda v, x: backbone.apply(v, x))(variables, images)  # the head is unused
  assert pooled.shape == (4, 64) and pooled.dtype == jnp.float32
  features = jax.jit(lambda v, x: model.apply(v, x, method="features"))(variables, images)
  np.testing.assert_allclose(pooled, jnp.mean(features["stage3"], axis=(1, 2)), rtol=1e-6)


def test_bfloat16_features_are_in_the_compute_dtype():
  model = CifarResNet(8, dtype=jnp.bfloat16)
  images = jnp.zeros((1, 16, 16, 3))
  shapes = jax.eval_shape(
      lambda: model.apply(model.init(jax.random.key(0), images), images, method="features"))
  assert {x.dtype for x in shapes.values()} == {jnp.dtype(jnp.bfloat16)}


# ---------------------------------------------------------------- stochastic depth

def _dropout_rates(model, images):
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dropout):
      rates.append(context.module.rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), images))
  return rates


def test_drop_path_rate_grows_linearly_from_zero_at_the_first_block_to_the_last():
  rates = _dropout_rates(CifarResNet(14, drop_path_rate=0.5), _images())
  np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
  assert _dropout_rates(CifarResNet(14), _images()) == []


def test_drop_path_is_the_identity_in_eval_mode_and_adds_no_parameters(cifar8):
  model, variables = cifar8
  dropped = CifarResNet(8, drop_path_rate=0.5)
  shapes = jax.eval_shape(lambda: dropped.init(jax.random.key(0), _images()))
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  images = _images()
  np.testing.assert_array_equal(  # no 'dropout' rng needed
      jax.jit(lambda v, x: dropped.apply(v, x))(variables, images),
      jax.jit(lambda v, x: model.apply(v, x))(variables, images))


def test_drop_path_in_training_draws_from_the_dropout_rng(cifar8):
  _, variables = cifar8
  # Unit scales everywhere, so that no residual branch starts at zero.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.ones_like(v) if path[-1].key == "scale" else v, variables)
  dropped = CifarResNet(8, drop_path_rate=0.5)

  @jax.jit
  def train(variables, images, key):
    logits, _ = dropped.apply(variables, images, train=True, mutable=["batch_stats"],
                              rngs={"dropout": key})
    return logits

  images = _images(batch=8)
  a, b = train(variables, images, jax.random.key(0)), train(variables, images, jax.random.key(1))
  assert np.abs(np.asarray(a - b)).max() > 1e-4
  with pytest.raises(Exception, match="dropout"):
    dropped.apply(variables, images, train=True, mutable=["batch_stats"])


def test_drop_path_drops_the_whole_residual_branch_of_each_example():
  # With an identity activation, a block is shortcut + branch: a dropped example
  # outputs its input, a kept one input + branch / keep.
  x = _images(batch=16, size=4, channels=8)
  block_kwargs = dict(
      filters=8, conv=functools.partial(nn.Conv, use_bias=False),
      norm=functools.partial(nn.BatchNorm, use_running_average=True), act=lambda y: y,
      zero_init_residual=False)
  variables = BasicBlock(**block_kwargs).init(jax.random.key(0), x)
  branch = BasicBlock(**block_kwargs).apply(variables, x) - x
  drop_path = functools.partial(nn.Dropout, 0.5, broadcast_dims=(1, 2, 3), deterministic=False)
  y = BasicBlock(drop_path=drop_path, **block_kwargs).apply(
      variables, x, rngs={"dropout": jax.random.key(3)})
  dropped = np.all(np.isclose(y, x, atol=1e-6), axis=(1, 2, 3))
  kept = np.all(np.isclose(y, x + 2 * branch, atol=1e-5), axis=(1, 2, 3))
  assert np.all(dropped ^ kept)
  assert 0 < dropped.sum() < 16
