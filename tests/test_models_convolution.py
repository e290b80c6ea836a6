"""The ResNets' convolution: a 1x1 kernel is a matmul on CPU and XLA's convolution elsewhere."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

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


def _compiled_text(fn, *args):
  return jax.jit(fn).lower(*args).compile().as_text()


def test_3x3_convolution_gradients_match_xla_in_both_modes():
  kx, kw, kg, kt = jax.random.split(jax.random.PRNGKey(1), 4)
  x = jax.nn.relu(jax.random.normal(kx, (2, 6, 5, 3)))
  w = jax.random.normal(kw, (3, 3, 3, 4))
  ours, xla = _both(x, w, (2, 1), [(1, 1), (1, 1)])
  y = xla(x, w)
  cotangent = jax.random.normal(kg, y.shape)
  for got, want in zip(jax.vjp(ours, x, w)[1](cotangent), jax.vjp(xla, x, w)[1](cotangent)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  tangents = (jax.random.normal(kt, x.shape), jnp.ones_like(w))
  np.testing.assert_allclose(jax.jvp(ours, (x, w), tangents)[1], jax.jvp(xla, (x, w), tangents)[1],
                             rtol=1e-5, atol=1e-5)
  # Only one argument differentiated: the other's tangent is a symbolic zero.
  np.testing.assert_allclose(jax.grad(lambda w: ours(x, w).sum())(w),
                             jax.grad(lambda w: xla(x, w).sum())(w), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.grad(lambda x: ours(x, w).sum())(x),
                             jax.grad(lambda x: xla(x, w).sum())(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the stored input is CPU's path")
def test_3x3_weight_gradient_reads_a_stored_input_on_cpu_only_when_differentiated():
  # The conditional that stops XLA from fusing the input's producers into the
  # weight gradient's transposing copy must survive XLA's own simplification.
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  ours, _ = _both(x, w, (1, 1), [(1, 1), (1, 1)])
  layer = lambda x, w: ours(jax.nn.relu(2.0 * x + 1.0), w)
  weight_grad = jax.grad(lambda x, w: layer(x, w).sum(), argnums=1)
  assert "conditional" in _compiled_text(weight_grad, x, w)
  assert "conditional" not in _compiled_text(layer, x, w)


def test_3x3_convolution_gradient_of_an_empty_batch():
  x, w = jnp.ones((0, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  ours, _ = _both(x, w, (1, 1), [(1, 1), (1, 1)])
  grad = jax.grad(lambda w: ours(x, w).sum())(w)
  np.testing.assert_array_equal(grad, np.zeros(w.shape))
