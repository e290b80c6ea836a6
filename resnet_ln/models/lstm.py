"""Layer-normalised LSTM (Ba, Kiros and Hinton, "Layer Normalization", 2016).

    [f, i, o, g] = LN(W_h h_{t-1}; a1, b1) + LN(W_x x_t; a2, b2) + b
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(LN(c_t; a3, b3))

The four gates are fused into one [.., 4H] vector in the order [f, i, o, g].
Parameters of a cell (the same for the cells and for every layer of `LSTM`):

    input_proj/kernel [in, 4H]       W_x        input_proj/scale, bias [4H]      a2, b2
    recurrent_proj/kernel [H, 4H]    W_h        recurrent_proj/scale, bias [4H]  a1, b1
    gate_bias [4H]                   b          cell_scale, cell_bias [H]        a3, b3

`LSTMCell` has the same parameters without the LayerNorm gains and biases.

Precision with `dtype=jnp.bfloat16`: the matmuls run in bfloat16 (accumulating in
float32); the LayerNorm statistics, the gate math, c and LN(c) run in float32, and
h is rounded to bfloat16. The carry keeps the dtypes it is given: `zero_carry`
gives c float32 and h bfloat16; a float32 (c, h) passed to a bfloat16 cell stays
float32 and so do the outputs, but h is still rounded to bfloat16 before W_h, so
the recurrence is no more precise (a bfloat16 c, though, loses the float32 sum
over time: keep c float32).

Against float32 the LN-LSTM drifts far more than the plain LSTM: for 2 layers x
64 units x 24 steps at the default init (standard normal inputs of 32 features),
max |diff| is about 0.11-0.16 on the outputs and 0.2-0.4 on the final c (plain
LSTM: 0.004 and 0.007). The LayerNorm divides W_h h by its own spread, so a
relative rounding error in h, x or a kernel becomes an absolute error of the O(1)
gates whatever |h|: the float32 net with only its parameters and inputs rounded
to bfloat16 already moves by 0.22. Gate math in bfloat16 doubled the drift
(0.19-0.28 and 0.4-0.86), hence float32 there, for elementwise work on
[batch, 4H] per step (and float32 gate activations saved for the backward pass).
"""

import functools
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
Carry = tuple[Array, Array]


def _check_at_least_one(module: nn.Module, *fields: str) -> None:
  """Refuses sizes below 1 (an empty cell or stack), naming the field and value."""
  for field in fields:
    value = getattr(module, field)
    if value < 1:
      raise ValueError(f"{type(module).__name__}: {field} must be >= 1, got {value}.")


def _check_rate(module: nn.Module, *fields: str) -> None:
  """Refuses dropout rates outside [0, 1) (a rate of 1 divides by zero keep)."""
  for field in fields:
    value = getattr(module, field)
    if not 0.0 <= value < 1.0:
      raise ValueError(f"{type(module).__name__}: {field} must be in [0, 1), got {value}.")


def _gatewise(init: Initializer) -> Initializer:
  """Applies `init` to each gate's [in, H] block of a fused [in, 4H] kernel."""

  def gatewise_init(key, shape, dtype=jnp.float32):
    in_features, fused = shape
    keys = jax.random.split(key, 4)
    # Drawn in at least float32: the orthogonal initializer's QR has no bfloat16
    # kernel, so `param_dtype=jnp.bfloat16` would fail otherwise.
    init_dtype = jnp.promote_types(dtype, jnp.float32)
    blocks = [init(k, (in_features, fused // 4), init_dtype) for k in keys]
    return jnp.concatenate(blocks, axis=-1).astype(dtype)

  return gatewise_init


def _forget_bias_init(forget_bias: float) -> Initializer:
  """Gate bias b: `forget_bias` on the forget gate (first quarter), zeros elsewhere."""

  def init(key, shape, dtype=jnp.float32):
    del key
    hidden = shape[-1] // 4
    return jnp.zeros(shape, dtype).at[..., :hidden].set(forget_bias)

  return init


def _grouped(x: Array, num_groups: int) -> Array:
  """x [..., F] as [..., num_groups, F / num_groups]; x itself for one group (a
  reshape to [..., 1, F] makes XLA:CPU copy large arrays to another layout)."""
  if num_groups == 1:
    return x
  return x.reshape(x.shape[:-1] + (num_groups, x.shape[-1] // num_groups))


def _normalized(x: Array, num_groups: int, epsilon: float) -> tuple[Array, Array]:
  """(x - mean) / sqrt(var + epsilon) over the last axis split into `num_groups`
  equal groups, and the 1 / sqrt(var + epsilon) [..., num_groups].

  Statistics are computed in (at least) float32 whatever the dtype of `x`; the
  results are float32 (float64 for float64 inputs).
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  grouped = _grouped(x, num_groups)
  centered = grouped - grouped.mean(-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.square(centered).mean(-1, keepdims=True) + epsilon)
  if num_groups == 1:
    return centered * rstd, rstd
  return (centered * rstd).reshape(x.shape), rstd[..., 0]


def _normalized_vjp(d_normalized: Array, normalized: Array, rstd: Array) -> Array:
  """The gradient of `_normalized`'s input from that of its output, given the output
  and the 1 / sqrt(var + epsilon) [..., num_groups] it returned."""
  num_groups = rstd.shape[-1]
  d, y = _grouped(d_normalized, num_groups), _grouped(normalized, num_groups)
  rstd = rstd if num_groups == 1 else rstd[..., None]
  d_x = rstd * (d - d.mean(-1, keepdims=True) - y * (d * y).mean(-1, keepdims=True))
  return d_x.reshape(d_normalized.shape)


class _GateProjection(nn.Module):
  """Fused gate pre-activations W z [..., 4H], LayerNorm-ed when `num_groups` is set.

  The matmul runs in `dtype`; the result is in (at least) float32, unrounded.

  Attributes:
    num_groups: None for no LayerNorm, 1 for statistics over all 4H units, 4 for
      statistics per gate.
  """

  features: int
  kernel_init: Initializer
  num_groups: int | None
  epsilon: float
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, z: Array) -> Array:
    """LN(W z), or W z."""
    kernel = self.param("kernel", self.kernel_init, (z.shape[-1], self.features), self.param_dtype)
    y = _product(z, kernel, self.dtype)
    norm = {}
    if self.num_groups is not None:
      norm["scale"] = self.param("scale", nn.initializers.ones, (self.features,), self.param_dtype)
      norm["bias"] = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    return _gate_norm(y, norm, self.num_groups, self.epsilon)[0]


def _product(z: Array, kernel: Array, dtype: Dtype) -> Array:
  """z @ kernel in `dtype`, accumulated and returned in (at least) float32, so a
  LayerNorm after it sees the unrounded product."""
  return jnp.dot(z.astype(dtype), kernel.astype(dtype),
                 preferred_element_type=jnp.promote_types(dtype, jnp.float32))


def _gate_norm(y: Array, norm: dict[str, Array], num_groups: int | None,
               epsilon: float) -> tuple[Array, tuple[Array, Array] | None]:
  """The LayerNorm of `y` (a gate product W z, or c for LN(c)) with the `norm`
  {"scale", "bias"} (`y` itself when `num_groups` is None), and what
  `_gate_norm_vjp` needs: the normalised `y` and its 1 / std (None without a
  LayerNorm). The result is in (at least) float32."""
  if num_groups is None:
    return y, None
  normalized, rstd = _normalized(y, num_groups, epsilon)
  scale, bias = (norm[k].astype(normalized.dtype) for k in ("scale", "bias"))
  return normalized * scale + bias, (normalized, rstd)


def _gate_norm_vjp(d_out: Array, norm: dict[str, Array],
                   residual: tuple[Array, Array] | None) -> Array:
  """The gradient of `_gate_norm`'s `y` (or of LN(c)'s c) from that of its output,
  given its `residual` (its scale's and bias's gradients are sums over steps, which
  the caller does)."""
  if residual is None:
    return d_out
  return _normalized_vjp(d_out * norm["scale"].astype(d_out.dtype), *residual)


def _summed_outer(a: Array, b: Array, dtype: Dtype) -> Array:
  """The sum over the leading axes of a^T b, in `dtype` accumulated in (at least)
  float32: [in, out] from a [..., in] and b [..., out], as one 2-D matmul (XLA:CPU
  transposes a 3-D contraction's larger operand first)."""
  a, b = (x.reshape(-1, x.shape[-1]).astype(dtype) for x in (a, b))
  return jnp.dot(a.T, b, preferred_element_type=jnp.promote_types(dtype, jnp.float32))


class _FusedLSTMCell(nn.RNNCellBase):
  """The LSTM update shared by `LSTMCell` and `LayerNormLSTMCell`.

  The step is split in two so that `LSTM` can choose where the input part runs:
  `input_gates` depends on x_t alone, so it can run for all time steps in one
  matmul before the recurrence (what `LSTM` does when it differentiates, and on
  every backend but CPU) or inside it, one step at a time (`LSTM`'s forward
  pass on CPU); `recurrent_step` is the per-step rest. `__call__` runs both.
  """

  features: int
  forget_bias: float = 1.0
  kernel_init: Initializer = nn.initializers.lecun_normal()
  recurrent_kernel_init: Initializer = _gatewise(nn.initializers.orthogonal())
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self) -> None:
    _check_at_least_one(self, "features")
    super().__post_init__()

  def _projection(self, kernel_init: Initializer) -> _GateProjection:
    return _GateProjection(
        features=4 * self.features,
        kernel_init=kernel_init,
        num_groups=None,
        epsilon=0.0,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )

  def _cell_output(self, c: Array) -> tuple[Array, Array, tuple[Array, Array] | None]:
    """Returns (the cell state under h's tanh, the carried cell state, LN(c)'s
    normalised c and 1 / std, or None without it)."""
    return c, c, None

  def setup(self) -> None:
    self.input_proj = self._projection(self.kernel_init)
    self.recurrent_proj = self._projection(self.recurrent_kernel_init)
    self.gate_bias = self.param(
        "gate_bias", _forget_bias_init(self.forget_bias), (4 * self.features,), self.param_dtype
    )

  def input_gates(self, inputs: Array) -> Array:
    """The input term of the gate pre-activations: LN(W_x x; a2, b2), or W_x x.

    Args:
      inputs: [..., in_features], any number of leading (batch, time) axes.

    Returns:
      [..., 4 * features] in `dtype` (so bfloat16 halves the [time, batch, 4H]
      array when all time steps are projected at once), gate order [f, i, o, g].
    """
    return self.input_proj(inputs).astype(self.dtype)

  def recurrent_step(
      self, carry: Carry, input_gates: Array, recurrent_mask: Array | None = None,
  ) -> tuple[Carry, Array]:
    """One time step given the precomputed `input_gates`.

    Args:
      carry: (c, h), each [batch, features].
      input_gates: [batch, 4 * features] from `input_gates`.
      recurrent_mask: optional [batch, features] dropout mask (already scaled)
        applied to h before W_h.

    Returns:
      ((c, h), h), the new carry and the output [batch, features].
    """
    c, h = carry
    h_in = _recurrent_input(h, recurrent_mask)
    # Only the matmuls run in `dtype`: the gate sums, nonlinearities, c and
    # LN(c) run in (at least) float32. The gate LayerNorms make the gates O(1)
    # whatever the scale of h, so bfloat16 rounding here would be felt in full;
    # in float32 it halves the LN-LSTM's bfloat16 drift, for elementwise work
    # on [batch, 4H] per step (see the module docstring).
    update_dtype = jnp.promote_types(self.dtype, jnp.float32)
    # The gate bias is added here, not in the hoisted part, where it would cost a
    # pass over the [time, batch, 4H] array; here it fuses into the gate math.
    gates = (self.recurrent_proj(h_in) + input_gates.astype(update_dtype)
             + self.gate_bias.astype(update_dtype))
    return self._update(gates, c, h.dtype)[0]

  def _update(self, gates: Array, c: Array,
              h_dtype: Dtype) -> tuple[tuple[Carry, Array], tuple[Any, ...]]:
    """The step from the gate pre-activations [batch, 4H] (at least float32) and c.

    Returns:
      (((c, h), h), residuals): the new carry and output as `recurrent_step`'s,
      and what `_recurrence_bwd` needs: the gate activations [batch, 4H], tanh of the
      cell state under h's tanh, and `_cell_output`'s LayerNorm parts.
    """
    f, i, o, g = jnp.split(gates, 4, axis=-1)
    f, i, o, g = nn.sigmoid(f), nn.sigmoid(i), nn.sigmoid(o), jnp.tanh(g)
    c_out, c_carried, cell_norm = self._cell_output(f * c + i * g)
    tanh_c = jnp.tanh(c_out)
    new_h = (o * tanh_c).astype(h_dtype)
    activations = jnp.concatenate([f, i, o, g], axis=-1)
    return ((c_carried.astype(c.dtype), new_h), new_h), (activations, tanh_c, cell_norm)

  def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
    """One time step.

    Args:
      carry: (c, h), each [batch, features].
      inputs: [batch, in_features].

    Returns:
      ((c, h), h), the new carry and the output [batch, features].
    """
    return self.recurrent_step(carry, self.input_gates(inputs))

  @nn.nowrap
  def zero_carry(self, batch_shape: Sequence[int]) -> Carry:
    """Zero (c, h). c is kept in at least float32 (it accumulates over time), h in `dtype`."""
    shape = tuple(batch_shape) + (self.features,)
    c_dtype = jnp.promote_types(self.dtype, jnp.float32)
    return jnp.zeros(shape, c_dtype), jnp.zeros(shape, self.dtype)

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> Carry:
    """Zero carry for inputs of shape [*batch, in_features] (`rng` is unused)."""
    del rng
    return self.zero_carry(input_shape[:-1])

  @property
  def num_feature_axes(self) -> int:
    return 1


class LSTMCell(_FusedLSTMCell):
  """Plain LSTM cell with fused [f, i, o, g] gates: the baseline for `LayerNormLSTMCell`.

  c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g), h_t = sigmoid(o) * tanh(c_t),
  [f, i, o, g] = W_h h_{t-1} + W_x x_t + b.

  Attributes:
    features: H, the size of h and c.
    forget_bias: initial value of the forget-gate bias.
    kernel_init: initializer of W_x [in, 4H].
    recurrent_kernel_init: initializer of W_h [H, 4H] (default: orthogonal per
      gate block).
    dtype: compute dtype of the matmuls, h and the outputs; the gate math and
      c are in at least float32 (see the module docstring on bfloat16).
    param_dtype: parameter storage dtype.
  """


class LayerNormLSTMCell(_FusedLSTMCell):
  """LayerNorm LSTM cell of Ba, Kiros and Hinton (2016); see the module docstring.

  Attributes:
    features: H, the size of h and c.
    per_gate: LayerNorm statistics per gate ([4, H]) instead of over all 4H units.
    normalize_carried_cell: carry LN(c_t) instead of the paper's raw c_t.
    epsilon: LayerNorm epsilon (keep it around 1e-5: tiny values cause NaNs).
    forget_bias: initial value of the forget-gate bias b_f.
    kernel_init: initializer of W_x [in, 4H].
    recurrent_kernel_init: initializer of W_h [H, 4H] (default: orthogonal per
      gate block).
    dtype: compute dtype of the matmuls, h and the outputs; the LayerNorm
      statistics, the gate math, c and LN(c) are in at least float32. A
      float32 carry passed to a bfloat16 cell stays float32 (outputs too), but
      h is still rounded before W_h; bfloat16 drifts from float32 by about
      0.15 on the outputs of 2 x 64-unit layers over 24 steps (see the module
      docstring).
    param_dtype: parameter storage dtype.
  """

  per_gate: bool = False
  normalize_carried_cell: bool = False
  epsilon: float = 1e-5

  def _projection(self, kernel_init: Initializer) -> _GateProjection:
    return _GateProjection(
        features=4 * self.features,
        kernel_init=kernel_init,
        num_groups=4 if self.per_gate else 1,
        epsilon=self.epsilon,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )

  def _cell_output(self, c: Array) -> tuple[Array, Array, tuple[Array, Array]]:
    c_norm, parts = _gate_norm(c, {"scale": self.cell_scale, "bias": self.cell_bias}, 1,
                               self.epsilon)
    return c_norm, c_norm if self.normalize_carried_cell else c, parts

  def setup(self) -> None:
    super().setup()
    shape = (self.features,)
    self.cell_scale = self.param("cell_scale", nn.initializers.ones, shape, self.param_dtype)
    self.cell_bias = self.param("cell_bias", nn.initializers.zeros, shape, self.param_dtype)


def _checked_lengths(seq_lengths: Any, batch: int, time: int) -> Array:
  """`seq_lengths` as int32 [batch] in [0, time].

  Concrete lengths (a list, NumPy or jax array of any integer dtype) are
  checked; traced ones (under `jit`) cannot be, and are clamped to [0, time].

  Raises:
    TypeError: the lengths are not integers.
    ValueError: the lengths are not [batch], or a concrete one is outside [0, time].
  """
  lengths = seq_lengths if isinstance(seq_lengths, jax.Array) else np.asarray(seq_lengths)
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise TypeError(f"seq_lengths must be integers, got dtype {lengths.dtype}.")
  if lengths.shape != (batch,):
    raise ValueError(f"seq_lengths must be [batch] = ({batch},), got shape {lengths.shape}.")
  if isinstance(lengths, jax.core.Tracer) or not isinstance(time, int):
    return jnp.clip(lengths, 0, time).astype(jnp.int32)
  values = np.asarray(lengths)
  bad = np.flatnonzero((values < 0) | (values > time))
  if bad.size:
    raise ValueError(
        f"seq_lengths[{bad[0]}] = {values[bad[0]]} is outside [0, time] = [0, {time}].")
  return jnp.asarray(values, jnp.int32)


def _reverse_within_length(x: Array, seq_lengths: Array | None) -> Array:
  """Reverses each sequence of time-major `x` [time, batch, ...] within its length.

  Padding stays where it is, so the reversed sequence starts at its own last
  valid step. Applying it twice is the identity.
  """
  if seq_lengths is None:
    return jnp.flip(x, axis=0)
  steps = jnp.arange(x.shape[0])[:, None]
  index = jnp.where(steps < seq_lengths[None, :], seq_lengths[None, :] - 1 - steps, steps)
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=0)


def _recurrent_input(h: Array, recurrent_mask: Array | None) -> Array:
  """The h that meets W_h: h, with recurrent dropout when a mask is given."""
  return h if recurrent_mask is None else h * recurrent_mask


def _scan_steps(cell: _FusedLSTMCell, unroll: int, params: dict[str, Any], carry: Carry,
                inputs: Array, valid: Array | None, recurrent_mask: Array | None,
                project_inputs: bool = False) -> tuple[Carry, Array]:
  """Scans the unbound `cell` with `params` over time-major `inputs`: the input
  gates [time, batch, 4H] from `input_gates`, fed to `recurrent_step`, or with
  `project_inputs` the layer inputs x [time, batch, in], projected at each step.

  Where `valid` [time, batch] is False the carry is kept and the output is zero,
  so the final carry is the one at each sequence's last valid step.
  """

  def step(carry, xs):
    inputs_t, valid_t = xs
    if project_inputs:
      inputs_t = cell.apply({"params": params}, inputs_t, method=_FusedLSTMCell.input_gates)
    new_carry, h = cell.apply({"params": params}, carry, inputs_t, recurrent_mask,
                              method=_FusedLSTMCell.recurrent_step)
    return _keep_invalid(valid_t, carry, new_carry, h)

  return jax.lax.scan(step, carry, (inputs, valid), unroll=unroll)


def _keep_invalid(valid_t: Array | None, carry: Carry, new_carry: Carry,
                  h: Array) -> tuple[Carry, Array]:
  """(new carry, output) of a step: the old carry and a zero output where `valid_t`
  [batch] is False."""
  if valid_t is None:
    return new_carry, h
  keep = valid_t[:, None]
  new_carry = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_carry, carry)
  return new_carry, jnp.where(keep, h, jnp.zeros_like(h))


def _input_gates(cell: _FusedLSTMCell, params: dict[str, Any], input_params: dict[str, Any],
                 inputs: Array) -> Array:
  """The unbound `cell`'s `input_gates` of `inputs` with its input projection's `input_params`."""
  return cell.apply({"params": {**params, "input_proj": input_params}}, inputs,
                    method=_FusedLSTMCell.input_gates)


def _norm_config(cell: _FusedLSTMCell) -> tuple[int | None, float]:
  """(number of groups, epsilon) of the LayerNorms of W_x x and W_h h: (None, 0.0)
  for the plain cell."""
  if not isinstance(cell, LayerNormLSTMCell):
    return None, 0.0
  return 4 if cell.per_gate else 1, cell.epsilon


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recurrence(cell: _FusedLSTMCell, unroll: int, params: dict[str, Any], carry: Carry,
                inputs: Array, valid: Array | None,
                recurrent_mask: Array | None) -> tuple[Carry, Array]:
  """The cell over time-major `inputs` [time, batch, in]: ((c, h) final, outputs
  [time, batch, H]).

  The input projection of all time steps is one matmul before the loop (on CPU
  without a gradient, one per step inside it: see below). The backward pass is
  written out (`_recurrence_fwd`, `_recurrence_bwd`): the forward loop saves
  the gate activations and the LayerNorms' normalised values and 1 / std, the
  backward loop does one elementwise pass and one [4H, H] matmul per step, and
  the parameters' gradients are matmuls and sums over all steps after it.
  """
  def hoisted(inputs):
    input_gates = _input_gates(cell, params, params["input_proj"], inputs)
    return _scan_steps(cell, unroll, params, carry, input_gates, valid, recurrent_mask)

  def per_step(inputs):
    return _scan_steps(cell, unroll, params, carry, inputs, valid, recurrent_mask,
                       project_inputs=True)

  # Without a gradient (eval, inference), on CPU each step projects its own input
  # inside the loop: XLA:CPU then neither writes nor reads back a [time, batch, 4H]
  # array of input gates, and the char LM's eval step took 0.72 of the time, the
  # LN-LSTM's 0.79 (bench/RESULTS.md, run F). Other platforms keep the one matmul.
  return jax.lax.platform_dependent(inputs, cpu=per_step, default=hoisted)


def _recurrence_fwd(cell, unroll, params, carry, inputs, valid, recurrent_mask):
  groups, epsilon = _norm_config(cell)
  # `input_gates`, as `_GateProjection` and the cell compute it, keeping its LayerNorm's parts.
  input_gates, input_norm = _gate_norm(
      _product(inputs, params["input_proj"]["kernel"], cell.dtype), params["input_proj"],
      groups, epsilon)
  input_gates = input_gates.astype(cell.dtype)
  update_dtype = jnp.promote_types(cell.dtype, jnp.float32)
  recurrent = params["recurrent_proj"]
  gate_bias = params["gate_bias"].astype(update_dtype)

  def step(carry, xs):
    input_gates_t, valid_t = xs
    c, h = carry
    h_in = _recurrent_input(h, recurrent_mask).astype(cell.dtype)
    gates, recurrent_norm = _gate_norm(_product(h_in, recurrent["kernel"], cell.dtype),
                                       recurrent, groups, epsilon)
    gates = gates + input_gates_t.astype(update_dtype) + gate_bias
    (new_carry, new_h), (activations, tanh_c, cell_norm) = cell.apply(
        {"params": params}, gates, c, h.dtype, method=_FusedLSTMCell._update)
    new_carry, new_h = _keep_invalid(valid_t, carry, new_carry, new_h)
    return new_carry, (new_h, (h_in, c, activations, tanh_c, recurrent_norm, cell_norm))

  final, (outputs, steps) = jax.lax.scan(step, carry, (input_gates, valid), unroll=unroll)
  residuals = (input_norm, inputs, steps, params, valid, recurrent_mask)
  return (final, outputs), residuals


def _recurrence_bwd(cell, unroll, residuals, cotangents):
  input_norm, inputs, steps, params, valid, recurrent_mask = residuals
  (d_final_c, d_final_h), d_outputs = cotangents
  c_dtype, h_dtype = d_final_c.dtype, d_final_h.dtype  # Those of the carry.
  update_dtype = jnp.promote_types(cell.dtype, jnp.float32)
  recurrent = params["recurrent_proj"]
  kernel_t = recurrent["kernel"].T
  normalize_carried = getattr(cell, "normalize_carried_cell", False)
  cell_gain = {"scale": params["cell_scale"]} if "cell_scale" in params else {}

  def step(d_carry, xs):
    d_out_t, valid_t, (_, c, activations, tanh_c, recurrent_norm, cell_norm) = xs
    d_c, d_h = d_carry[0].astype(update_dtype), (d_carry[1] + d_out_t).astype(update_dtype)
    if valid_t is not None:  # A kept carry passes its gradient on; the step gets none.
      keep = valid_t[:, None]
      d_c_kept = jnp.where(keep, jnp.zeros_like(d_carry[0]), d_carry[0])
      d_h_kept = jnp.where(keep, jnp.zeros_like(d_carry[1]), d_carry[1])
      d_c, d_h = jnp.where(keep, d_c, 0), jnp.where(keep, d_h, 0)
    # h = o tanh(c_out), c_out = LN(c_new) (or c_new), c_new = f c + i g, with f, i,
    # o the sigmoids and g the tanh of the gates; the carried c is c_new or c_out.
    f, i, o, g = jnp.split(activations, 4, axis=-1)
    d_o = d_h * tanh_c * o * (1 - o)
    d_c_out = d_h * o * (1 - jnp.square(tanh_c))
    if cell_norm is not None and normalize_carried:
      d_c_out = d_c_out + d_c
    d_new_c = _gate_norm_vjp(d_c_out, cell_gain, cell_norm)
    if cell_norm is None or not normalize_carried:
      d_new_c = d_new_c + d_c
    d_gates = jnp.concatenate([d_new_c * c * f * (1 - f), d_new_c * g * i * (1 - i), d_o,
                               d_new_c * i * (1 - jnp.square(g))], axis=-1)
    d_pre = _gate_norm_vjp(d_gates, recurrent, recurrent_norm)
    d_h_in = _product(d_pre, kernel_t, cell.dtype)
    d_prev = ((d_new_c * f).astype(c_dtype),
              _recurrent_input(d_h_in, recurrent_mask).astype(h_dtype))
    if valid_t is not None:
      d_prev = (d_prev[0] + d_c_kept, d_prev[1] + d_h_kept)
    # Stacked once each: without a LayerNorm, d_pre is d_gates.
    return d_prev, (d_gates, None if recurrent_norm is None else d_pre,
                    None if cell_norm is None else d_c_out)

  d_carry, (d_gates, d_pre, d_c_out) = jax.lax.scan(
      step, (d_final_c, d_final_h), (d_outputs, valid, steps), reverse=True, unroll=unroll)
  h_in, _, _, _, recurrent_norm, cell_norm = steps
  if d_pre is None:
    d_pre = d_gates

  def total(*operands):  # The sum over time and batch of their product, per unit.
    spec = ",".join("tbu" for _ in operands)
    return jnp.einsum(f"{spec}->u", *operands, preferred_element_type=update_dtype)

  def norm_grads(d_out, residual):  # A gate LayerNorm's scale and bias.
    return {} if residual is None else {"scale": total(d_out, residual[0]), "bias": total(d_out)}

  # Through the rounding of the input gates to the cell's dtype.
  d_input_gates = d_gates.astype(cell.dtype).astype(update_dtype)
  d_input_product = _gate_norm_vjp(d_input_gates, params["input_proj"], input_norm)
  input_kernel = params["input_proj"]["kernel"]
  d_params = {
      "gate_bias": total(d_gates),
      "input_proj": {"kernel": _summed_outer(inputs, d_input_product, cell.dtype),
                     **norm_grads(d_input_gates, input_norm)},
      "recurrent_proj": {"kernel": _summed_outer(h_in, d_pre, cell.dtype),
                         **norm_grads(d_gates, recurrent_norm)},
  }
  if cell_norm is not None:
    d_params.update(cell_scale=total(d_c_out, cell_norm[0]), cell_bias=total(d_c_out))
  d_inputs = _product(d_input_product, input_kernel.T, cell.dtype).astype(inputs.dtype)
  d_params = jax.tree.map(lambda d, p: d.astype(p.dtype), d_params, params)
  # Neither the validity nor the dropout mask depends on a parameter.
  d_valid = None if valid is None else np.zeros(valid.shape, jax.dtypes.float0)
  d_mask = None if recurrent_mask is None else jnp.zeros_like(recurrent_mask)
  return d_params, d_carry, d_inputs, d_valid, d_mask


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _scan_cell(
    cell: _FusedLSTMCell,
    carry: Carry,
    inputs: Array,
    valid: Array | None,
    recurrent_mask: Array | None,
    unroll: int,
) -> tuple[Carry, Array]:
  """Runs the bound `cell` over time-major `inputs` [time, batch, in] (see `_recurrence`),
  on the cell's own parameters."""
  if cell.is_initializing():  # Creates the cell's parameters.
    cell.recurrent_step(carry, cell.input_gates(jnp.zeros(inputs.shape[1:], inputs.dtype)),
                        recurrent_mask)
  # Plain dicts of plain arrays (the custom VJP returns its gradient in the same
  # structure): params may come frozen, or boxed by `nn.with_partitioning`.
  params = nn.meta.unbox(flax.core.unfreeze(cell.variables["params"]))
  return _recurrence(cell.clone(parent=None), unroll, params, carry, inputs, valid,
                     recurrent_mask)


class LSTM(nn.Module):
  """A stack of (LayerNorm) LSTM layers over batch-major sequences.

  Each layer computes the input projection (and its LayerNorm) for all time steps
  in one matmul, then scans the recurrent part with one fused [H, 4H] matmul per
  step (a forward pass without a gradient on CPU projects each step's input inside
  the loop instead, which XLA:CPU runs faster). Its backward pass is written out
  (a custom VJP): the forward loop saves the gate activations and LayerNorm
  statistics, the backward loop runs one elementwise pass and one matmul per
  step, and W_h's gradient is one matmul over all steps after it. So the layer is
  differentiable in reverse mode (`jax.grad`, `jax.vjp`) but not in forward mode
  (`jax.jvp`, `jax.jacfwd`). Layer parameters are named `layer_{i}` (and
  `layer_{i}_backward` for the backward direction) and have exactly a cell's
  structure, so a `LayerNormLSTMCell`'s (or `LSTMCell`'s) params can be used as
  a layer's.

  Attributes:
    features: H, hidden size per direction.
    num_layers: number of stacked layers.
    layer_norm: `LayerNormLSTMCell` if True, else the plain `LSTMCell`.
    bidirectional: run a backward direction too and concatenate its outputs.
    dropout_rate: dropout on the inputs of layers 2..num_layers (train only).
    recurrent_dropout_rate: dropout on h before W_h, one mask per sequence for
      all time steps (train only).
    unroll: scan unroll factor.
    per_gate, normalize_carried_cell, epsilon: see `LayerNormLSTMCell`.
    forget_bias, kernel_init, recurrent_kernel_init, dtype, param_dtype: see
      `LSTMCell`.
  """

  features: int
  num_layers: int = 1
  layer_norm: bool = True
  bidirectional: bool = False
  dropout_rate: float = 0.0
  recurrent_dropout_rate: float = 0.0
  unroll: int = 1
  per_gate: bool = False
  normalize_carried_cell: bool = False
  epsilon: float = 1e-5
  forget_bias: float = 1.0
  kernel_init: Initializer = nn.initializers.lecun_normal()
  recurrent_kernel_init: Initializer = _gatewise(nn.initializers.orthogonal())
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self) -> None:
    _check_at_least_one(self, "features", "num_layers", "unroll")
    _check_rate(self, "dropout_rate", "recurrent_dropout_rate")
    super().__post_init__()

  def _cell(self, name: str) -> _FusedLSTMCell:
    common = dict(
        features=self.features,
        forget_bias=self.forget_bias,
        kernel_init=self.kernel_init,
        recurrent_kernel_init=self.recurrent_kernel_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
    )
    if not self.layer_norm:
      return LSTMCell(**common)
    return LayerNormLSTMCell(
        per_gate=self.per_gate,
        normalize_carried_cell=self.normalize_carried_cell,
        epsilon=self.epsilon,
        **common,
    )

  def _direction(
      self,
      cell: _FusedLSTMCell,
      x: Array,
      valid: Array | None,
      seq_lengths: Array | None,
      backward: bool,
      train: bool,
      initial_carry: Carry | None,
  ) -> tuple[Carry, Array]:
    """One direction of one layer on time-major x [time, batch, in], from `initial_carry`
    (zeros when None)."""
    if backward:
      x = _reverse_within_length(x, seq_lengths)
    recurrent_mask = None
    if train and self.recurrent_dropout_rate > 0:
      keep = 1.0 - self.recurrent_dropout_rate
      mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[1], self.features))
      recurrent_mask = (mask / keep).astype(self.dtype)
    if initial_carry is None:
      initial_carry = cell.zero_carry(x.shape[1:2])
    carry, y = _scan_cell(cell, initial_carry, x, valid, recurrent_mask, self.unroll)
    if backward:
      y = _reverse_within_length(y, seq_lengths)
    return carry, y

  @nn.nowrap
  def initial_carries(self, batch_size: int) -> tuple[Carry, ...]:
    """Zero carries for `__call__(initial_carries=...)`: one (c, h) of [batch_size, features]
    per layer, c in at least float32 and h in `dtype` (as `LSTMCell.zero_carry`).

    Raises:
      ValueError: the stack is bidirectional (its backward direction cannot be resumed).
    """
    self._check_resumable()
    cell = LSTMCell(self.features, dtype=self.dtype, parent=None)
    return tuple(cell.zero_carry((batch_size,)) for _ in range(self.num_layers))

  @nn.nowrap
  def _check_resumable(self) -> None:
    if self.bidirectional:
      raise ValueError(
          "LSTM: a bidirectional stack cannot start from initial carries: its backward "
          "direction reads each sequence from its end, so it cannot be run in chunks.")

  @nn.compact
  def __call__(
      self,
      inputs: Array,
      seq_lengths: Array | None = None,
      train: bool = False,
      initial_carries: tuple[Carry, ...] | None = None,
  ) -> tuple[Array, tuple[Any, ...]]:
    """Runs the stack.

    A long sequence can be run in chunks (streaming, or generation one step at a
    time): passing one call's final carries as the next call's `initial_carries`
    gives the outputs of one call over the concatenated inputs (with
    `seq_lengths`, each chunk's lengths are the part of each sequence inside it).

    Args:
      inputs: [batch, time, in_features].
      seq_lengths: optional [batch] integers (a list, NumPy or jax array of
        any integer dtype) in [0, time], the valid length of each sequence;
        steps past it neither affect any output or carry nor produce output
        (zeros). Concrete lengths outside [0, time] are a ValueError; traced
        ones (under `jit`) cannot be checked and are clamped to [0, time].
      train: enables dropout (needs a 'dropout' rng when a rate is > 0).
      initial_carries: the carries to start from, structured as `final_carries`
        (e.g. a previous call's, or `initial_carries(batch)`); None starts from
        zeros. Not for bidirectional stacks.

    Returns:
      (outputs, final_carries): outputs [batch, time, features] (2 * features
      when bidirectional, forward first), in `dtype`; final_carries a tuple with
      one entry per layer, each (c, h) of [batch, features] taken at each
      sequence's last valid step, or ((c, h) forward, (c, h) backward) when
      bidirectional (the backward carry is the one after reading back to step 0).

    Raises:
      TypeError: float (or other non-integer) `seq_lengths`.
      ValueError: concrete `seq_lengths` outside [0, time], or not [batch];
        `initial_carries` for a bidirectional stack or with other than one
        carry per layer.
    """
    if initial_carries is not None:
      self._check_resumable()
      if len(initial_carries) != self.num_layers:
        raise ValueError(f"LSTM: initial_carries has {len(initial_carries)} entries; expected "
                         f"one (c, h) per layer, {self.num_layers}.")
    x = jnp.swapaxes(inputs, 0, 1)  # time-major: scan runs over the leading axis
    valid = None
    if seq_lengths is not None:
      seq_lengths = _checked_lengths(seq_lengths, x.shape[1], x.shape[0])
      valid = jnp.arange(x.shape[0])[:, None] < seq_lengths[None, :]
      # Zeroing the padding keeps even NaN/inf padding out of the gradients.
      x = jnp.where(valid[..., None], x, jnp.zeros_like(x))
    final_carries = []
    for layer in range(self.num_layers):
      if layer > 0 and self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      forward_carry, y = self._direction(
          self._cell(f"layer_{layer}"), x, valid, seq_lengths, False, train,
          None if initial_carries is None else initial_carries[layer],
      )
      if self.bidirectional:
        backward_carry, y_backward = self._direction(
            self._cell(f"layer_{layer}_backward"), x, valid, seq_lengths, True, train, None
        )
        final_carries.append((forward_carry, backward_carry))
        x = jnp.concatenate([y, y_backward], axis=-1)
      else:
        final_carries.append(forward_carry)
        x = y
    return jnp.swapaxes(x, 0, 1), tuple(final_carries)
