"""The ResNets' convolution: a 1x1 kernel is a matmul on CPU and XLA's convolution elsewhere."""

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


def _hlo_ops(fn, *args, platforms=("cpu",)):
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(*args)
  return exported.mlir_module()


def test_pointwise_train_step_on_cpu_has_no_convolution():
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((1, 1, 4, 6))
  ours, _ = _both(x, w, (2, 2), "VALID")
  grads = jax.grad(lambda x, w: ours(x, w).sum(), argnums=(0, 1))
  module = _hlo_ops(grads, x, w)
  assert "stablehlo.convolution" not in module
  assert "stablehlo.dot_general" in module


def test_other_platforms_keep_xla_convolution():
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((1, 1, 4, 6))
  ours, _ = _both(x, w, (1, 1), "VALID")
  module = _hlo_ops(ours, x, w, platforms=("cuda",))
  assert "stablehlo.convolution" in module
  assert "stablehlo.dot_general" not in module


@pytest.mark.parametrize("kernel,padding", [((3, 3), [(1, 1), (1, 1)]), ((1, 1), [(1, 1), (1, 1)])])
def test_other_convolutions_are_xla_convolutions_on_cpu(kernel, padding):
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((*kernel, 4, 6))
  ours, xla = _both(x, w, (1, 1), padding)
  np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-6)
  assert "stablehlo.convolution" in _hlo_ops(ours, x, w)
