"""Tests of the ResNets: parameter counts, shapes, padding, BatchNorm, dtypes, registry.

Deep nets are only traced (`jax.eval_shape`, lowering); only tiny CIFAR nets compile.
"""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_ln.models import BasicBlock
from resnet_ln.models import BottleneckBlock
from resnet_ln.models import CifarResNet
from resnet_ln.models import ResNet
from resnet_ln.models import get_model
from resnet_ln.models import list_models


def _shapes(model, image_size=32, batch=1):
  """Variable shapes of `model`, traced only."""
  images = jnp.zeros((batch, image_size, image_size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))


def _num_params(model, image_size=32):
  return sum(x.size for x in jax.tree.leaves(_shapes(model, image_size)["params"]))


def _images(batch=4, size=16, seed=0, channels=3):
  """Standard normal images, [batch, size, size, channels]."""
  shape = (batch, size, size, channels)
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _random_variables(model, image_size, seed=0):
  """Random variables drawn with NumPy (no PRNG compiles): He-scaled kernels, unit variances."""
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    name = path[-1].key
    if name == "var":
      return np.ones(shape.shape, np.float32)
    std = np.sqrt(2 / np.prod(shape.shape[:-1])) if name == "kernel" else 0.1
    return rng.normal(1.0 if name == "scale" else 0.0, std, shape.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, _shapes(model, image_size))


@pytest.fixture(scope="module")
def cifar8():
  """The smallest CIFAR ResNet (one block per stage) and its initial variables.

  Eager init: its PRNG compiles are cached, so other depth-8 nets init for free.
  """
  model = CifarResNet(8)
  return model, model.init(jax.random.key(0), _images(), train=False)


# ---------------------------------------------------------------- parameter counts

# DESIGN.md's table (torchvision's counts for ImageNet; option A for CIFAR).
@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_689_512),
    ("resnet34", 21_797_672),
    ("resnet50", 25_557_032),
    ("resnet101", 44_549_160),
    ("resnet152", 60_192_808),
])
def test_imagenet_param_counts_match_torchvision(name, expected):
  assert _num_params(get_model(name, num_classes=1000)) == expected


@pytest.mark.parametrize("name, expected", [
    ("cifar_resnet20", 269_722),
    ("cifar_resnet32", 464_154),
    ("cifar_resnet44", 658_586),
    ("cifar_resnet56", 853_018),
    ("cifar_resnet110", 1_727_962),
    ("cifar_resnet1202", 19_421_274),
])
def test_cifar_param_counts_match_design_table(name, expected):
  assert _num_params(get_model(name, num_classes=10)) == expected


# A projection is a 1x1 conv (in * out weights) plus a norm (2 * out).
_PROJ_16_32 = 16 * 32 + 2 * 32  # 576
_PROJ_32_64 = 32 * 64 + 2 * 64  # 2176
_PROJ_16_16 = 16 * 16 + 2 * 16  # 288
_PROJ_32_32 = 32 * 32 + 2 * 32  # 1088
_PROJ_64_64 = 64 * 64 + 2 * 64  # 4224


def test_cifar_shortcut_b_adds_projections_where_the_shape_changes():
  # Option B projects at the first block of stages 2 and 3 only.
  assert _num_params(CifarResNet(20, shortcut="B")) == 269_722 + _PROJ_16_32 + _PROJ_32_64


def test_cifar_shortcut_c_adds_projections_in_every_block():
  # ResNet-20 has 3 blocks per stage; stages 2 and 3 start with a widening one.
  expected = (269_722 + 3 * _PROJ_16_16 + _PROJ_16_32 + 2 * _PROJ_32_32
              + _PROJ_32_64 + 2 * _PROJ_64_64)
  assert _num_params(CifarResNet(20, shortcut="C")) == expected == 283_962


@pytest.mark.parametrize("name, resnet_count", [
    ("plain18", 11_689_512),
    ("plain34", 21_797_672),
])
def test_imagenet_plain_nets_are_resnets_without_projections(name, resnet_count):
  # ResNet-18/34 project 64->128, 128->256 and 256->512 (1x1 conv + BatchNorm).
  projections = (64 * 128 + 2 * 128) + (128 * 256 + 2 * 256) + (256 * 512 + 2 * 512)
  assert projections == 173_824
  assert _num_params(get_model(name)) == resnet_count - projections


@pytest.mark.parametrize("depth, expected", [(20, 269_722), (56, 853_018), (110, 1_727_962)])
def test_cifar_plain_nets_have_option_a_counts(depth, expected):
  # Option A shortcuts have no parameters, so dropping them changes no count.
  assert _num_params(get_model(f"cifar_plain{depth}")) == expected


# ---------------------------------------------------------------- shapes and structure

@pytest.mark.parametrize("name, image_size, num_classes", [
    ("resnet18", 224, 1000),
    ("resnet50", 224, 1000),
    ("resnet152", 224, 7),
    ("plain34", 224, 1000),
    ("cifar_resnet56", 32, 10),
    ("cifar_plain20", 32, 100),
])
def test_forward_gives_float32_logits_of_shape_batch_by_classes(name, image_size, num_classes):
  model = get_model(name, num_classes=num_classes)
  images = jnp.zeros((2, image_size, image_size, 3))
  variables = _shapes(model, image_size)
  logits = jax.eval_shape(lambda v: model.apply(v, images, train=False), variables)
  assert logits.shape == (2, num_classes)
  assert logits.dtype == jnp.float32


def _intermediate_shapes(model, image_size):
  images = jnp.zeros((1, image_size, image_size, 3))

  def run():
    variables = model.init(jax.random.key(0), images, train=False)
    return model.apply(variables, images, train=False, capture_intermediates=True)[1]

  return flax.traverse_util.flatten_dict(jax.eval_shape(run)["intermediates"])


@pytest.mark.parametrize("stride_on_3x3, conv1_size, conv2_size", [(True, 56, 28), (False, 28, 28)])
def test_bottleneck_stride_on_3x3_or_on_first_1x1(stride_on_3x3, conv1_size, conv2_size):
  shapes = _intermediate_shapes(get_model("resnet50", stride_on_3x3=stride_on_3x3), 224)
  assert shapes[("stage2_block0", "conv1", "__call__")][0].shape[1] == conv1_size
  assert shapes[("stage2_block0", "conv2", "__call__")][0].shape[1] == conv2_size


def test_imagenet_stem_reduces_224_to_56_and_stages_to_7():
  shapes = _intermediate_shapes(get_model("resnet18"), 224)
  assert shapes[("stem_conv", "__call__")][0].shape == (1, 112, 112, 64)
  assert shapes[("stage1_block0", "__call__")][0].shape == (1, 56, 56, 64)
  assert shapes[("stage4_block1", "__call__")][0].shape == (1, 7, 7, 512)


@pytest.mark.parametrize("norm, conv_has_bias, has_batch_stats", [
    ("batch", False, True),
    ("layer", False, False),
    ("group", False, False),
    (None, True, False),
])
def test_norm_choice_sets_layers_and_conv_biases(norm, conv_has_bias, has_batch_stats):
  model = CifarResNet(8, norm=norm)
  variables = _random_variables(model, 16)
  assert ("bias" in variables["params"]["stem_conv"]) == conv_has_bias
  assert ("batch_stats" in variables) == has_batch_stats
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, _images())
  assert logits.shape == (4, 10)
  assert np.all(np.isfinite(logits))


# ---------------------------------------------------------------- padding

def _conv(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_stride_2_convs_pad_symmetrically_like_torchvision_not_same():
  # At stride 2 on even sizes 'SAME' pads one pixel less before than after.
  model = ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, num_filters=16, num_classes=3)
  images = _images(batch=1, size=16)
  variables = _random_variables(model, 16)
  _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True))(
      variables, images)
  outputs = flax.traverse_util.flatten_dict(state["intermediates"])
  params = variables["params"]

  stem = outputs[("stem_conv", "__call__")][0]
  kernel = params["stem_conv"]["kernel"]
  np.testing.assert_allclose(stem, _conv(images, kernel, 2, ((3, 3), (3, 3))), rtol=1e-4, atol=1e-4)
  assert not np.allclose(stem, _conv(images, kernel, 2, "SAME"), atol=1e-2)

  block_input = outputs[("stage1_block0", "__call__")][0]
  conv1 = outputs[("stage2_block0", "conv1", "__call__")][0]
  kernel = params["stage2_block0"]["conv1"]["kernel"]
  np.testing.assert_allclose(
      conv1, _conv(block_input, kernel, 2, ((1, 1), (1, 1))), rtol=1e-4, atol=1e-4)
  assert not np.allclose(conv1, _conv(block_input, kernel, 2, "SAME"), atol=1e-2)


# ---------------------------------------------------------------- training behaviour

def test_forward_backward_of_small_cifar_net_gives_finite_nonzero_grads(cifar8):
  model, variables = cifar8
  images, labels = _images(), jnp.arange(4)

  @jax.jit
  def grads(params):
    def loss(params):
      logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                              images, train=True, mutable=["batch_stats"])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
    return jax.grad(loss)(params)

  leaves = jax.tree.leaves(grads(variables["params"]))
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


def _train_apply(model):
  return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))


def _eval_apply(model):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def test_batch_stats_update_in_train_mode_and_not_in_eval_mode(cifar8):
  model, variables = cifar8
  images = _images() * 3 + 1
  _, updates = _train_apply(model)(variables, images)
  _, eval_updates = jax.jit(
      lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"]))(variables, images)
  before = variables["batch_stats"]["stem_norm"]
  assert not np.allclose(updates["batch_stats"]["stem_norm"]["mean"], before["mean"])
  assert not np.allclose(updates["batch_stats"]["stem_norm"]["var"], before["var"])
  jax.tree.map(np.testing.assert_array_equal, eval_updates["batch_stats"], variables["batch_stats"])


def test_train_mode_normalises_with_batch_statistics_eval_with_running_ones(cifar8):
  model, variables = cifar8
  images = _images()
  shifted = {**variables, "batch_stats": jax.tree.map(lambda s: s + 5.0, variables["batch_stats"])}
  train, evaluate = _train_apply(model), _eval_apply(model)
  np.testing.assert_allclose(train(variables, images)[0], train(shifted, images)[0], rtol=1e-6)
  assert not np.allclose(evaluate(variables, images), evaluate(shifted, images))


def test_axis_name_averages_batch_statistics_across_replicas(cifar8):
  model, variables = cifar8
  images = _images() * jnp.arange(1.0, 5.0)[:, None, None, None]

  def stem_mean(model, x):
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return updates["batch_stats"]["stem_norm"]["mean"]

  whole = jax.jit(functools.partial(stem_mean, model))(images)
  shards = images.reshape(2, 2, *images.shape[1:])
  synced = jax.jit(jax.vmap(functools.partial(stem_mean, model.clone(axis_name="batch")),
                            axis_name="batch"))(shards)
  per_device = jax.jit(jax.vmap(functools.partial(stem_mean, model)))(shards)
  np.testing.assert_allclose(synced[0], whole, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(synced[1], whole, rtol=1e-5, atol=1e-6)
  assert not np.allclose(per_device[0], whole, rtol=1e-3)


# ---------------------------------------------------------------- zero-init of residual branches

_CONV = functools.partial(nn.Conv, use_bias=False)
_NORM = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-5)


def _init_and_apply(block, x):
  variables = block.init(jax.random.key(0), x)
  return variables, block.apply(variables, x)


def test_zero_init_basic_block_is_relu_of_identity():
  x = _images(size=8, channels=16) - 0.5
  block = BasicBlock(filters=16, conv=_CONV, norm=_NORM, act=nn.relu)
  _, y = _init_and_apply(block, x)
  np.testing.assert_allclose(y, jax.nn.relu(x), atol=1e-6)


def test_zero_init_basic_block_option_a_is_relu_of_subsampled_zero_padded_input():
  x = _images(size=8, channels=16) - 0.5
  block = BasicBlock(filters=32, conv=_CONV, norm=_NORM, act=nn.relu, strides=2, shortcut="A")
  variables, y = _init_and_apply(block, x)
  expected = jnp.pad(jax.nn.relu(x[:, ::2, ::2, :]), ((0, 0), (0, 0), (0, 0), (0, 16)))
  assert "proj_conv" not in variables["params"]
  np.testing.assert_allclose(y, expected, atol=1e-6)


def test_zero_init_bottleneck_block_is_relu_of_projection():
  x = _images(size=8, channels=16) - 0.5
  block = BottleneckBlock(filters=8, conv=_CONV, norm=_NORM, act=nn.relu, strides=2)
  variables, y = _init_and_apply(block, x)
  projection = _conv(x, variables["params"]["proj_conv"]["kernel"], 2, "VALID")
  # Fresh BatchNorm in eval mode: mean 0, variance 1, scale 1, bias 0.
  np.testing.assert_allclose(y, jax.nn.relu(projection / np.sqrt(1 + 1e-5)), rtol=1e-5, atol=1e-6)


def test_without_zero_init_the_residual_branch_contributes():
  x = _images(size=8, channels=16) - 0.5
  block = BasicBlock(filters=16, conv=_CONV, norm=_NORM, act=nn.relu, zero_init_residual=False)
  _, y = _init_and_apply(block, x)
  assert not np.allclose(y, jax.nn.relu(x), atol=1e-3)


@pytest.mark.parametrize("name, zero_init_residual, expected_scale", [
    ("cifar_resnet8", True, 0.0),
    ("cifar_resnet8", False, 1.0),
    ("cifar_plain8", True, 1.0),  # a plain net has no shortcut to fall back on
])
def test_last_norm_scale_starts_at_zero_only_in_residual_blocks(
    cifar8, name, zero_init_residual, expected_scale):
  del cifar8  # initialised first, so this init reuses its compiled PRNG ops
  model = get_model(name, zero_init_residual=zero_init_residual)
  params = model.init(jax.random.key(0), _images(), train=False)["params"]
  np.testing.assert_array_equal(params["stage2_block0"]["norm2"]["scale"], expected_scale)
  np.testing.assert_array_equal(params["stage2_block0"]["norm1"]["scale"], 1.0)


# ---------------------------------------------------------------- dtypes

def test_bfloat16_compute_keeps_float32_params_and_finite_float32_logits(cifar8):
  del cifar8  # initialised first, so this init reuses its compiled PRNG ops
  model = CifarResNet(8, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), _images(), train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  logits, _ = _train_apply(model)(variables, _images())
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_bfloat16_model_computes_convolutions_in_bfloat16():
  model = CifarResNet(8, dtype=jnp.bfloat16)
  shapes = _intermediate_shapes(model, 16)
  assert shapes[("stem_conv", "__call__")][0].dtype == jnp.bfloat16
  assert shapes[("head", "__call__")][0].dtype == jnp.bfloat16
  assert shapes[("__call__",)][0].dtype == jnp.float32


# ---------------------------------------------------------------- registry and errors

def test_registry_lists_the_paper_models():
  names = set(list_models())
  assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34"} <= names
  assert {f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110, 1202)} <= names
  assert {f"cifar_plain{d}" for d in (20, 32, 44, 56, 110)} <= names


def test_registry_passes_kwargs_to_the_module():
  model = get_model("resnet50", num_classes=10, dtype=jnp.bfloat16, axis_name="batch")
  assert (model.num_classes, model.dtype, model.axis_name) == (10, jnp.bfloat16, "batch")
  assert model.stage_sizes == (3, 4, 6, 3) and model.block_cls is BottleneckBlock
  assert get_model("cifar_resnet8").stage_sizes == (1, 1, 1)
  assert get_model("cifar_plain14").residual is False


@pytest.mark.parametrize("name", ["cifar_resnet21", "cifar_resnet2", "cifar_plain33"])
def test_invalid_cifar_depth_raises_naming_value_and_rule(name):
  depth = name.removeprefix("cifar_resnet").removeprefix("cifar_plain")
  with pytest.raises(ValueError, match=rf"6n \+ 2.*got {depth}\."):
    get_model(name)


def test_unknown_model_name_raises():
  with pytest.raises(ValueError, match="Unknown model 'resnet19'"):
    get_model("resnet19")


@pytest.mark.parametrize("kwargs, match", [
    ({"shortcut": "D"}, "shortcut must be one of .*'D'"),
    ({"norm": "instance"}, "norm must be one of .*'instance'"),
    ({"stem": "vit"}, "stem must be .*'vit'"),
])
def test_invalid_options_raise_when_the_model_is_built(kwargs, match):
  with pytest.raises(ValueError, match=match):
    get_model("resnet18", **kwargs)


# ---------------------------------------------------------------- cost

def test_resnet50_forward_flops_per_224_image_match_paper():
  # Paper: 3.8e9 multiply-adds (stride on the 1x1); torchvision's v1.5 has
  # 4.1e9, XLA counts 2 flops per multiply-add and skips the padding taps.
  model = get_model("resnet50")
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = _shapes(model, 224)
  cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  assert 7.6e9 < cost["flops"] < 8.4e9
