"""The ImageNet stem's max pool: flax's values, its gradient by shifts on CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_ln.models.pooling import max_pool


def _ties(key, shape):
  """ReLU outputs rounded to halves: many windows hold equal maxima, many all zeros."""
  return jnp.round(2 * jax.nn.relu(jax.random.normal(key, shape))) / 2


def _vjps(x, window, strides, padding, key):
  ours = lambda x: max_pool(x, window, strides, padding)
  flax = lambda x: nn.max_pool(x, window, strides, padding=padding)
  y, ours_vjp = jax.vjp(ours, x)
  expected, flax_vjp = jax.vjp(flax, x)
  np.testing.assert_array_equal(y, expected)
  cotangent = jax.random.normal(key, y.shape, y.dtype)
  return ours_vjp(cotangent)[0], flax_vjp(cotangent)[0]


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((2, 9, 7, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # The ImageNet stem's, odd sizes.
    ((2, 8, 8, 2), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((1, 7, 6, 2), (3, 2), (1, 2), "SAME"),
    ((1, 8, 9, 2), (2, 3), (2, 3), "VALID"),
])
def test_max_pool_matches_flax_with_its_gradient(shape, window, strides, padding):
  kx, kg = jax.random.split(jax.random.PRNGKey(0))
  got, want = _vjps(_ties(kx, shape), window, strides, padding, kg)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_goes_to_the_first_maximum_as_xla_picks():
  # Windows that do not overlap: each input gets at most one window's cotangent,
  # so the two gradients are equal exactly only if ties are broken alike.
  kx, kg = jax.random.split(jax.random.PRNGKey(1))
  x = _ties(kx, (2, 8, 8, 4))
  got, want = _vjps(x, (2, 2), (2, 2), ((0, 0), (0, 0)), kg)
  np.testing.assert_array_equal(got, want)
  assert np.sum(np.asarray(x) == 0) > x.size // 4  # The test has ties to break.


def test_max_pool_gradient_on_cpu_has_no_select_and_scatter():
  x = jnp.ones((2, 8, 8, 3))
  grad = jax.grad(lambda x: max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))).sum())
  cpu = jax.export.export(jax.jit(grad), platforms=("cpu",))(x).mlir_module()
  cuda = jax.export.export(jax.jit(grad), platforms=("cuda",))(x).mlir_module()
  assert "stablehlo.select_and_scatter" not in cpu
  assert "stablehlo.select_and_scatter" in cuda


def test_max_pool_and_its_gradient_export_with_symbolic_sizes():
  fn = lambda x: max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
  grad = jax.grad(lambda x: (fn(x) ** 2).sum())
  shape = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, h, w, 3"), jnp.float32)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 9, 11, 3))
  for f in (fn, grad):
    exported = jax.export.export(jax.jit(f), platforms=("cpu",))(shape)
    np.testing.assert_array_equal(exported.call(x), f(x))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_max_pool_gradient_in_half_precision_matches_flax(dtype):
  kx, kg = jax.random.split(jax.random.PRNGKey(3))
  got, want = _vjps(_ties(kx, (2, 9, 7, 3)).astype(dtype), (3, 3), (2, 2), ((1, 1), (1, 1)), kg)
  assert got.dtype == dtype
  np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-2, atol=1e-2)
