"""The convolution the ResNets use: XLA's, with a CPU path for 1x1 kernels and gradients.

`conv_general_dilated` has the signature of `jax.lax.conv_general_dilated` and is
what the ResNets hand to `nn.Conv(conv_general_dilated=...)`. On CPU, a 1x1
convolution (NHWC input, HWIO kernel, no padding or dilation, one group) runs as
the matrix multiply it is, `[N*H*W, C] @ [C, O]` after subsampling by its stride.
Why: XLA:CPU computes a convolution's weight gradient as another convolution
whose operands it first transposes to put the batch last (`[C, H, W, N]`), and
those copies cost as much as the arithmetic; as a 2-D matmul, the weight
gradient is one GEMM. On 2 Xeon vCPUs the ResNet-50 train step takes 0.56 of the
time this way (bench/RESULTS.md, `python -m bench.compare`'s `xla_conv`). Other
platforms keep XLA's convolution (not measured against a matmul there): the
choice is made per platform when the step is lowered, by
`jax.lax.platform_dependent`, so a function exported for several platforms
carries each one's own path.

Every other convolution on CPU is XLA's, with one change to what its gradient
reads. XLA:CPU computes the weight gradient from a copy of the convolution's input
transposed to `[C, H, W, N]`, and it fuses into that copy the elementwise work that
produced the input (BatchNorm, ReLU and the residual additions, back through
several blocks), recomputed in the transposed order, which reads memory with a
large stride: in CIFAR ResNet-20's train step those copies took most of the
operations' time. So on CPU, when a gradient is taken, the weight gradient reads
the input through a conditional that returns it unchanged: XLA cannot fuse
across a conditional, so the transposing copy reads the stored activation (the
step takes 0.75 of the time on ResNet-20; `lax.optimization_barrier` does not
survive to fusion). Without a gradient nothing changes.

The two paths compute the same sums in a different order: they agree to float
rounding (about 1e-6 relative in float32).
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_pointwise(lhs: jax.Array, rhs: jax.Array, padding, lhs_dilation, rhs_dilation,
                  dimension_numbers, feature_group_count: int) -> bool:
  """Whether this is an NHWC 1x1 convolution without padding, dilation or groups."""
  if lhs.ndim != 4 or rhs.shape[:2] != (1, 1) or feature_group_count != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    return False
  if isinstance(padding, str):
    if padding.upper() not in ("VALID", "SAME"):  # 'SAME' pads nothing for a 1x1 kernel.
      return False
  elif len(padding) != 2 or any(tuple(p) != (0, 0) for p in padding):
    return False
  expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == expected


def subsample(x: jax.Array, strides: Sequence[int]) -> jax.Array:
  """Every `strides[0]`-th row and `strides[1]`-th column of NHWC `x`, as a strided
  convolution samples them.

  `lax.slice` gives the output size as (size - 1) // stride + 1, the form XLA's
  convolutions use, so `jax.export` with symbolic image sizes can match the result
  to a convolution's; `x[:, ::s, ::s]` computes an equal size it cannot prove equal.
  """
  if all(s == 1 for s in strides):
    return x
  return lax.slice(x, (0, 0, 0, 0), x.shape, (1, *strides, 1))


def _pointwise_matmul(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int],
                      precision) -> jax.Array:
  """A 1x1 convolution of NHWC `lhs` with [1, 1, C, O] `rhs` as a 2-D matmul.

  The operands are flattened to [N*H*W, C] first: XLA:CPU then computes the weight
  gradient [N*H*W, C]^T @ [N*H*W, O] as one GEMM on them, where the same product over
  the 4-D arrays first copies an operand into a transposed layout.
  """
  x = subsample(lhs, strides)
  n, h, w, c = x.shape
  y = lax.dot_general(x.reshape(n * h * w, c), rhs[0, 0], (((1,), (0,)), ((), ())),
                      precision=precision)
  return y.reshape(n, h, w, rhs.shape[-1])


def stored(x: jax.Array, key: jax.Array | None = None) -> jax.Array:
  """`x` unchanged, as a buffer XLA cannot fuse its producers through.

  XLA:CPU fuses elementwise producers into every consumer, recomputing them; a
  conditional is opaque to fusion. Its predicate reads the first element of `key`
  (default `x`), so it cannot be folded away; pass a replicated array (a kernel)
  when `x` is sharded under `jax.jit`, or reading `x[0]` costs a collective. Its
  branches differ as computations, so XLA does not merge them: a NaN takes the one
  that writes `x`'s NaNs anew. Both return `x`'s values. Under `jax.vmap` with a
  batched `key` the conditional becomes a select, and fusion is no longer stopped.
  """
  key = x if key is None else key
  if x.size == 0 or key.size == 0:
    return x
  return lax.cond(jnp.isnan(key.reshape(-1)[0]), lambda x: jnp.where(jnp.isnan(x), jnp.nan, x),
                  lambda x: x, x)


def _weight_gradient_reads_stored_input(convolution: Callable[[jax.Array, jax.Array], jax.Array]
                                        ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`convolution`, whose derivative in `rhs` reads `stored(lhs, key=rhs)`.

  A custom JVP, so that forward mode still works and reverse mode transposes it:
  the stored input is the residual the weight gradient reads.
  """

  @jax.custom_jvp
  def convolve(lhs, rhs):
    return convolution(lhs, rhs)

  def jvp(primals, tangents):
    (lhs, rhs), (lhs_dot, rhs_dot) = primals, tangents
    # JAX calls this with at least one tangent that is not a symbolic zero.
    terms = []
    if not isinstance(lhs_dot, SymbolicZero):
      terms.append(convolution(lhs_dot, rhs))
    if not isinstance(rhs_dot, SymbolicZero):
      terms.append(convolution(stored(lhs, key=rhs), rhs_dot))
    return convolution(lhs, rhs), sum(terms[1:], terms[0])

  convolve.defjvp(jvp, symbolic_zeros=True)
  return convolve


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> jax.Array:
  """`jax.lax.conv_general_dilated`; on CPU, 1x1 kernels as a matmul, and the weight
  gradient of the others reading a stored input (see the module docstring)."""

  def xla_convolution(lhs, rhs):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)

  if (batch_group_count != 1 or preferred_element_type is not None
      or not _is_pointwise(lhs, rhs, padding, lhs_dilation, rhs_dilation,
                           dimension_numbers, feature_group_count)):
    cpu = _weight_gradient_reads_stored_input(xla_convolution)
  else:
    cpu = lambda lhs, rhs: _pointwise_matmul(lhs, rhs, window_strides, precision)
  return lax.platform_dependent(lhs, rhs, cpu=cpu, default=xla_convolution)
