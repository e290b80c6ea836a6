"""The ResNets' convolution: a 1x1 kernel is a matmul on CPU and XLA's convolution elsewhere."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resnet_ln import xla_defaults
from resnet_ln.models.convolution import conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")


def _both(x, w, strides, padding):
  ours = lambda x, w: conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
  xla = lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
  return ours, xla


@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 1)])
def test_pointwise_convolution_matches_xla_with_its_gradients(strides):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (3, 7, 6, 8))
  w = jax.random.normal(kw, (1, 1, 8, 5))
  ours, xla = _both(x, w, strides, [(0, 0), (0, 0)])
  y = xla(x, w)
  np.testing.assert_allclose(ours(x, w), y, rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(kg, y.shape)
  grads = jax.vjp(ours, x, w)[1](cotangent)
  expected = jax.vjp(xla, x, w)[1](cotangent)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _stablehlo_text(fn, *args, platforms=("cpu",)):
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(*args)
  return exported.mlir_module()


def test_pointwise_train_step_on_cpu_has_no_convolution():
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((1, 1, 4, 6))
  ours, _ = _both(x, w, (2, 2), "VALID")
  grads = jax.grad(lambda x, w: ours(x, w).sum(), argnums=(0, 1))
  module = _stablehlo_text(grads, x, w)
  assert "stablehlo.convolution" not in module
  assert "stablehlo.dot_general" in module


def test_other_platforms_keep_xla_convolution():
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((1, 1, 4, 6))
  ours, _ = _both(x, w, (1, 1), "VALID")
  module = _stablehlo_text(ours, x, w, platforms=("cuda",))
  assert "stablehlo.convolution" in module
  assert "stablehlo.dot_general" not in module


@pytest.mark.parametrize("kernel,padding", [((3, 3), [(1, 1), (1, 1)]), ((1, 1), [(1, 1), (1, 1)])])
def test_other_convolutions_are_xla_convolutions_on_cpu(kernel, padding):
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((*kernel, 4, 6))
  ours, xla = _both(x, w, (1, 1), padding)
  np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-6)
  assert "stablehlo.convolution" in _stablehlo_text(ours, x, w)


def test_pointwise_convolution_exports_with_symbolic_batch_and_size():
  w = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 4, 6))
  fn = lambda x: conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=NHWC)
  shape = jax.export.symbolic_shape("b, h, w, 4")
  exported = jax.export.export(jax.jit(fn))(jax.ShapeDtypeStruct(shape, jnp.float32))
  x = jnp.ones((3, 9, 7, 4))
  np.testing.assert_allclose(exported.call(x), fn(x), rtol=1e-6)
  assert exported.out_avals[0].shape[1:] == ((shape[1] - 1) // 2 + 1, (shape[2] - 1) // 2 + 1, 6)


def test_flax_conv_takes_the_matmul_path():
  conv = nn.Conv(6, (1, 1), strides=2, padding=0, conv_general_dilated=conv_general_dilated)
  x = jnp.ones((2, 8, 8, 4))
  variables = conv.init(jax.random.PRNGKey(0), x)
  module = _stablehlo_text(lambda x: conv.apply(variables, x), x)
  assert "stablehlo.convolution" not in module and "stablehlo.dot_general" in module


def _custom_fusions_with_convolutions(hlo_text: str) -> int:
  """How many library (kCustom) fusions of a compiled module compute a convolution."""
  blocks = [block.strip() for block in hlo_text.split("\n\n")]
  computations = {block.split(" ", 1)[0]: block for block in blocks if block.startswith("%")}
  calls = [line.split("calls=")[1].split(",")[0] for line in hlo_text.splitlines()
           if "kind=kCustom" in line and "calls=" in line]
  return sum("convolution(" in computations.get(called, "") for called in calls)


def test_cpu_weight_gradient_is_left_to_xla_not_ynnpack():
  # At this size XLA's default hands the 3x3 weight gradient to YNNPACK (a kCustom
  # fusion); `import resnet_ln` set the option that keeps it XLA's own.
  assert f"{xla_defaults.FLAG}={xla_defaults.VALUE}" in os.environ["XLA_FLAGS"]
  x, w = jnp.ones((64, 32, 32, 16)), jnp.ones((3, 3, 16, 16))
  loss = lambda x, w: jnp.sum(lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                       dimension_numbers=NHWC) ** 2)
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  assert "convolution(" in hlo
  assert _custom_fusions_with_convolutions(hlo) == 0


def test_cpu_default_is_added_once_and_never_over_the_users_own():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_defaults.set_cpu_defaults(environ, (0, 10))
  assert environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8 "
                                  "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
  assert not xla_defaults.set_cpu_defaults(environ, (0, 10))
  own = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"}
  assert not xla_defaults.set_cpu_defaults(own, (0, 10))
  assert own["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
  empty = {}
  assert xla_defaults.set_cpu_defaults(empty, (0, 9))
  assert empty["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
  for unknown_to_xla in [(0, 8), (0, 11), (1, 0)]:
    untouched = {}
    assert not xla_defaults.set_cpu_defaults(untouched, unknown_to_xla)
    assert untouched == {}
