"""The ImageNet stem's max pool, with a gradient XLA:CPU computes quickly.

`max_pool` has the signature of `flax.linen.max_pool` for NHWC inputs and the
same forward pass. Its gradient is different work for the same result: JAX
differentiates a max pool into XLA's select-and-scatter, which XLA:CPU expands
into a variadic reduce-window over four int32 index arrays the size of the
padded input, and a scatter: in ResNet-18's train step (batch 16, 112x112, 2 CPU
cores) about 100 ms of operation time per step, summed over the cores, against
about 40 ms this way (the step 2 to 4% faster, `bench/RESULTS.md` run E). Here
the backward pass finds, for each output, the window position of its maximum
(the first one in row-major window order, as select-and-scatter and PyTorch pick
among ties; a NaN counts as a maximum, as in PyTorch, where select-and-scatter
moves past it), and routes the cotangent there with shifts and an interleave of
the `strides[0] * strides[1]` phases of the input: a few elementwise fusions.
Other platforms keep JAX's own gradient: the choice is made when the step is
lowered, by `jax.lax.platform_dependent`, as in `resnet_ln.models.convolution`.

Where windows overlap, an input's gradient is a sum over windows whose order
differs from XLA's, so the two agree to float rounding; elsewhere they are equal
(windows holding a NaN aside).
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnet_ln.models.convolution import stored

Padding = str | Sequence[tuple[int, int]]


def _pairs(padding: Padding, window_shape: Sequence[int], strides: Sequence[int],
           spatial: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Explicit (low, high) padding of the two spatial dimensions."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(spatial, window_shape, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _window_taps(x_pad: jax.Array, window_shape: Sequence[int], strides: Sequence[int],
                 out_hw: Sequence[int]) -> list[jax.Array]:
  """For each window position (row-major), the [N, Ho, Wo, C] inputs it reads."""
  n, _, _, c = x_pad.shape
  (sh, sw), (ho, wo) = strides, out_hw
  return [lax.slice(x_pad, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1))
          for i in range(window_shape[0]) for j in range(window_shape[1])]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window_shape: tuple[int, int], strides: tuple[int, int],
              padding: tuple[tuple[int, int], ...]) -> jax.Array:
  return nn.max_pool(x, window_shape, strides, padding=padding)


def _max_pool_fwd(x, window_shape, strides, padding):
  y = _max_pool(x, window_shape, strides, padding)
  # Stored, or XLA recomputes x's producers (BatchNorm, ReLU) for each window position.
  return y, (stored(x), y)


def _max_pool_bwd(window_shape, strides, padding, residuals, g):
  x, y = residuals
  x_pad = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  n, hp, wp, c = x_pad.shape
  ho, wo = y.shape[1:3]
  (kh, kw), (sh, sw) = window_shape, strides
  # The window position of each output's maximum: the first among ties.
  taps = _window_taps(x_pad, window_shape, strides, (ho, wo))
  argmax = jnp.full(y.shape, len(taps), jnp.int32)
  for k in reversed(range(len(taps))):
    argmax = jnp.where((taps[k] == y) | jnp.isnan(taps[k]), k, argmax)
  # Input row sh * p + a is window row i = a + sh * u of output p - u: each phase
  # (a, b) of the padded input gathers its windows' cotangents by plain shifts.
  hq, wq = -(-hp // sh), -(-wp // sw)
  zero = jnp.zeros((), g.dtype)
  rows = []
  for a in range(sh):
    phases = []
    for b in range(sw):
      phase = jnp.zeros((n, hq, wq, c), g.dtype)
      for i in range(a, kh, sh):
        for j in range(b, kw, sw):
          u, v = (i - a) // sh, (j - b) // sw
          routed = jnp.where(argmax == i * kw + j, g, zero)
          phase = phase + lax.pad(routed, zero, ((0, 0, 0), (u, hq - ho - u, 0),
                                                 (v, wq - wo - v, 0), (0, 0, 0)))
      phases.append(phase)
    rows.append(jnp.stack(phases, axis=3))  # [N, hq, wq, sw, C]
  dx_pad = jnp.stack(rows, axis=2).reshape(n, hq * sh, wq * sw, c)
  (top, _), (left, _) = padding
  return (dx_pad[:, top:top + x.shape[1], left:left + x.shape[2]],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(inputs: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: Padding = "VALID") -> jax.Array:
  """`flax.linen.max_pool` of NHWC `inputs` [batch, height, width, channels].

  Args:
    inputs: the images or feature maps, 4-D NHWC.
    window_shape: (height, width) of the window.
    strides: (height, width) steps between windows; None: 1 (as flax).
    padding: 'VALID', 'SAME' or ((top, bottom), (left, right)), padded with -inf.

  Returns:
    [batch, out_height, out_width, channels], as `flax.linen.max_pool`. On CPU its
    gradient is computed as this module's docstring says.
  """
  window_shape = tuple(window_shape)
  strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
  if inputs.ndim != 4 or len(window_shape) != 2 or len(strides) != 2:
    return nn.max_pool(inputs, window_shape, strides, padding=padding)
  pads = _pairs(padding, window_shape, strides, inputs.shape[1:3])
  return lax.platform_dependent(
      inputs,
      cpu=lambda x: _max_pool(x, window_shape, strides, pads),
      default=lambda x: nn.max_pool(x, window_shape, strides, padding=pads))
