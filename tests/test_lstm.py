"""LayerNorm LSTM: the paper's equations, its invariances, variable lengths, gradients."""

import functools
import itertools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from resnet_ln.models import LSTM
from resnet_ln.models import LSTMCell
from resnet_ln.models import LayerNormLSTMCell

H = 8
LENGTHS = np.array([6, 3, 1, 5])


@functools.lru_cache(maxsize=None)
def _apply(module):
  return jax.jit(module.apply, static_argnames="train")


def _random_params(module, *args, seed=0):
  """Random values for every parameter of `module`, LayerNorm gains around 1.

  None is trivial (zero biases, unit gains), and no initializer is compiled:
  the shapes come from an abstract `init(key, *args)`.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]
  leaves, treedef = jax.tree.flatten_with_path(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  values = []
  for (path, leaf), key in zip(leaves, keys):
    noise = jax.random.normal(key, leaf.shape, leaf.dtype)
    is_gain = path[-1].key in ("scale", "cell_scale")
    values.append(1.0 + 0.3 * noise if is_gain else 0.5 * noise)
  return jax.tree.unflatten(treedef, values)


def _sequences(batch=4, time=6, features=5, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, time, features))


# NumPy reference: the paper's equations written out independently, in float64.


def _np_layer_norm(x, gain, bias, groups, epsilon):
  grouped = x.reshape(x.shape[:-1] + (groups, -1))
  mean = grouped.mean(-1, keepdims=True)
  var = grouped.var(-1, keepdims=True)
  return ((grouped - mean) / np.sqrt(var + epsilon)).reshape(x.shape) * gain + bias


def _np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_step(p, c, h, x, layer_norm, groups=1, normalize_carried_cell=False, epsilon=1e-5):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  wx = x @ p["input_proj"]["kernel"]
  wh = h @ p["recurrent_proj"]["kernel"]
  if layer_norm:
    recurrent, inputs = p["recurrent_proj"], p["input_proj"]
    wh = _np_layer_norm(wh, recurrent["scale"], recurrent["bias"], groups, epsilon)
    wx = _np_layer_norm(wx, inputs["scale"], inputs["bias"], groups, epsilon)
  f, i, o, g = np.split(wh + wx + p["gate_bias"], 4, axis=-1)
  c_new = _np_sigmoid(f) * c + _np_sigmoid(i) * np.tanh(g)
  c_hat = c_new
  if layer_norm:
    c_hat = _np_layer_norm(c_new, p["cell_scale"], p["cell_bias"], 1, epsilon)
  h_new = _np_sigmoid(o) * np.tanh(c_hat)
  return (c_hat if normalize_carried_cell else c_new), h_new


CELL_CASES = [
    pytest.param(LayerNormLSTMCell(4), dict(layer_norm=True), (1, 3), id="ln_batch1_in3_h4"),
    pytest.param(LayerNormLSTMCell(H), dict(layer_norm=True), (2, 5), id="ln_batch2_in5_h8"),
    pytest.param(LayerNormLSTMCell(3), dict(layer_norm=True), (4, 7), id="ln_batch4_in7_h3"),
    pytest.param(
        LayerNormLSTMCell(H, per_gate=True), dict(layer_norm=True, groups=4), (2, 5), id="per_gate"
    ),
    pytest.param(
        LayerNormLSTMCell(H, normalize_carried_cell=True),
        dict(layer_norm=True, normalize_carried_cell=True),
        (2, 5),
        id="normalize_carried_cell",
    ),
    pytest.param(LSTMCell(H), dict(layer_norm=False), (2, 5), id="plain"),
]


@pytest.mark.parametrize("cell, reference, shape", CELL_CASES)
def test_cell_matches_numpy_paper_equations(cell, reference, shape):
  batch, in_features = shape
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(4, batch, in_features))
  c = rng.normal(size=(batch, cell.features))
  h = np.tanh(rng.normal(size=(batch, cell.features)))
  carry = (jnp.asarray(c, jnp.float32), jnp.asarray(h, jnp.float32))
  params = _random_params(cell, carry, jnp.asarray(xs[0], jnp.float32), seed=1)
  for x in xs:
    carry, out = _apply(cell)({"params": params}, carry, jnp.asarray(x, jnp.float32))
    c, h = _np_step(params, c, h, x, **reference)
    np.testing.assert_allclose(carry[0], c, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(carry[1], h, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out, h, atol=1e-5, rtol=1e-5)


def test_default_init_has_forget_bias_one_and_orthogonal_recurrent_gate_blocks():
  x = jnp.ones((2, 3))
  carry = LayerNormLSTMCell(4).initialize_carry(jax.random.key(0), x.shape)
  params = jax.jit(LayerNormLSTMCell(4).init)(jax.random.key(0), carry, x)["params"]
  np.testing.assert_array_equal(params["gate_bias"], [1.0] * 4 + [0.0] * 12)
  kernel = np.asarray(params["recurrent_proj"]["kernel"])
  for gate in np.split(kernel, 4, axis=-1):
    np.testing.assert_allclose(gate.T @ gate, np.eye(4), atol=1e-5)
  assert not np.allclose(kernel[:, :4], kernel[:, 4:8])
  assert set(params) == {"input_proj", "recurrent_proj", "gate_bias", "cell_scale", "cell_bias"}
  np.testing.assert_array_equal(params["cell_scale"], np.ones(4))
  np.testing.assert_array_equal(params["input_proj"]["scale"], np.ones(16))


def test_plain_cell_has_no_norms_and_takes_forget_bias():
  x = jnp.ones((2, 3))
  carry = LSTMCell(4).initialize_carry(jax.random.key(0), x.shape)
  plain = jax.jit(LSTMCell(4, forget_bias=2.0).init)(jax.random.key(0), carry, x)["params"]
  np.testing.assert_array_equal(plain["gate_bias"], [2.0] * 4 + [0.0] * 12)
  assert set(plain) == {"input_proj", "recurrent_proj", "gate_bias"}
  assert set(plain["input_proj"]) == set(plain["recurrent_proj"]) == {"kernel"}


def test_bfloat16_params_initialise():
  # The orthogonal initializer's QR has no bfloat16 kernel.
  x = jnp.ones((2, 3))
  cell = LayerNormLSTMCell(4, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  carry = cell.initialize_carry(jax.random.key(0), x.shape)
  params = jax.jit(cell.init)(jax.random.key(0), carry, x)["params"]
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params))
  kernel = np.asarray(params["recurrent_proj"]["kernel"], np.float32)[:, :4]
  np.testing.assert_allclose(kernel.T @ kernel, np.eye(4), atol=2e-2)


# The paper's Table 1 invariances. They are exact only as epsilon -> 0: with the
# default 1e-5 an output moves by about epsilon / var(W z), a few 1e-5 here; with
# 1e-10 they hold to float32 rounding. The plain LSTM's outputs move by O(1).

LN_LSTM = LSTM(H)
PLAIN_LSTM = LSTM(H, layer_norm=False)

INVARIANCE_CASES = [
    pytest.param(LN_LSTM, True, 1e-4, id="ln_lstm"),
    pytest.param(LSTM(H, epsilon=1e-10), True, 1e-6, id="ln_lstm_epsilon_1e-10"),
    pytest.param(PLAIN_LSTM, False, 1e-1, id="plain_lstm"),
]


def _max_change(model, params_a, x_a, params_b, x_b):
  """The largest output change of each example, [batch]."""
  y_a, _ = _apply(model)({"params": params_a}, x_a)
  y_b, _ = _apply(model)({"params": params_b}, x_b)
  return np.abs(np.asarray(y_a) - np.asarray(y_b)).max(axis=(1, 2))


@pytest.mark.parametrize("model, invariant, bound", INVARIANCE_CASES)
def test_ln_lstm_output_invariant_to_scaling_one_examples_inputs(model, invariant, bound):
  x = _sequences()
  scaled = x.at[0].multiply(10.0)
  params = _random_params(model, x, seed=1)
  change = _max_change(model, params, x, params, scaled)
  assert change[1:].max() == 0.0  # the other examples are untouched
  assert (change[0] < bound) if invariant else (change[0] > bound), change


@pytest.mark.parametrize("kernel", ["input_proj", "recurrent_proj"])
@pytest.mark.parametrize("model, invariant, bound", INVARIANCE_CASES)
def test_ln_lstm_output_invariant_to_rescaling_weight_matrix(model, invariant, bound, kernel):
  x = _sequences()
  params = _random_params(model, x, seed=2)
  scaled = jax.tree.map(lambda a: a, params)
  scaled["layer_0"][kernel]["kernel"] = 5.0 * params["layer_0"][kernel]["kernel"]
  change = _max_change(model, params, x, scaled, x).max()
  assert (change < bound) if invariant else (change > bound), change


# Variable-length batches.

BI_LSTM = LSTM(H, bidirectional=True)
DEEP_BI_LSTM = LSTM(H, num_layers=2, bidirectional=True)


def _within_lengths(y, lengths):
  return [np.asarray(y[b, :n]) for b, n in enumerate(lengths)]


def _assert_trees_close(a, b, atol=1e-6):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=atol, rtol=1e-6), a, b)


def test_padding_contents_change_nothing_and_padded_outputs_are_zero():
  x = _sequences()
  valid = np.arange(x.shape[1])[None, :, None] < LENGTHS[:, None, None]
  other = jnp.where(valid, x, 1e3 * _sequences(seed=7))
  params = _random_params(DEEP_BI_LSTM, x, LENGTHS, seed=3)
  y, carries = _apply(DEEP_BI_LSTM)({"params": params}, x, LENGTHS)
  y_other, carries_other = _apply(DEEP_BI_LSTM)({"params": params}, other, LENGTHS)
  np.testing.assert_array_equal(y, y_other)
  jax.tree.map(np.testing.assert_array_equal, carries, carries_other)
  assert np.all(np.where(valid, 0.0, np.asarray(y)) == 0.0)
  assert np.abs(np.asarray(y)[valid[..., 0]]).min() > 0.0


def test_zero_length_sequence_gives_zero_outputs_and_zero_carry():
  x = _sequences()
  lengths = np.array([6, 3, 0, 5])
  params = _random_params(DEEP_BI_LSTM, x, lengths, seed=3)
  y, carries = _apply(DEEP_BI_LSTM)({"params": params}, x, lengths)
  assert not np.any(np.asarray(y[2]))
  assert not any(np.any(np.asarray(leaf[2])) for leaf in jax.tree.leaves(carries))


def test_flax_rnn_of_cell_matches_layer_and_its_final_carry():
  x = _sequences()
  rnn = nn.RNN(LayerNormLSTMCell(H), return_carry=True)
  cell_params = _random_params(rnn, x, seed=4)["cell"]
  carry, y = rnn.apply({"params": {"cell": cell_params}}, x, seq_lengths=LENGTHS)
  y_layer, (carry_layer,) = _apply(LN_LSTM)({"params": {"layer_0": cell_params}}, x, LENGTHS)
  _assert_trees_close(_within_lengths(y_layer, LENGTHS), _within_lengths(y, LENGTHS))
  _assert_trees_close(carry_layer, carry)


def test_flax_bidirectional_of_cells_matches_bidirectional_layer():
  x = _sequences()
  birnn = nn.Bidirectional(
      nn.RNN(LayerNormLSTMCell(H)), nn.RNN(LayerNormLSTMCell(H)), return_carry=True
  )
  params = _random_params(birnn, x, seed=5)
  forward, backward = params["forward_rnn"]["cell"], params["backward_rnn"]["cell"]
  carry, y = birnn.apply(
      {"params": {"forward_rnn": {"cell": forward}, "backward_rnn": {"cell": backward}}},
      x,
      seq_lengths=LENGTHS,
  )
  params = {"layer_0": forward, "layer_0_backward": backward}
  y_layer, (carry_layer,) = _apply(BI_LSTM)({"params": params}, x, LENGTHS)
  _assert_trees_close(_within_lengths(y_layer, LENGTHS), _within_lengths(y, LENGTHS))
  _assert_trees_close(carry_layer, carry)


def test_backward_direction_equals_forward_run_on_each_sequence_reversed_in_its_length():
  x = np.asarray(_sequences())
  params = _random_params(BI_LSTM, x, LENGTHS, seed=8)
  y, ((_, backward_carry),) = _apply(BI_LSTM)({"params": params}, x, LENGTHS)
  reversed_x = np.zeros_like(x)
  for b, n in enumerate(LENGTHS):
    reversed_x[b, :n] = x[b, :n][::-1]
  y_reversed, (carry,) = _apply(LN_LSTM)(
      {"params": {"layer_0": params["layer_0_backward"]}}, reversed_x, LENGTHS
  )
  for b, n in enumerate(LENGTHS):
    np.testing.assert_allclose(y[b, :n, H:], y_reversed[b, :n][::-1], atol=1e-6)
  _assert_trees_close(backward_carry, carry)


FAST_PATH_CASES = [
    pytest.param(LayerNormLSTMCell(H), LSTM(H), id="layer_norm"),
    pytest.param(
        LayerNormLSTMCell(H, per_gate=True, normalize_carried_cell=True, epsilon=1e-2),
        LSTM(H, unroll=3, per_gate=True, normalize_carried_cell=True, epsilon=1e-2),
        id="layer_norm_options_unroll_3",
    ),
    pytest.param(LSTMCell(H), LSTM(H, layer_norm=False, unroll=2), id="plain_unroll_2"),
]


@pytest.mark.parametrize("cell, model", FAST_PATH_CASES)
def test_fast_path_equals_cell_run_step_by_step_with_cells_params(cell, model):
  x = _sequences()
  carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
  cell_params = _random_params(cell, carry, x[:, 0], seed=9)
  outputs = []
  for t in range(x.shape[1]):
    carry, out = _apply(cell)({"params": cell_params}, carry, x[:, t])
    outputs.append(out)
  y, (final_carry,) = _apply(model)({"params": {"layer_0": cell_params}}, x)
  np.testing.assert_allclose(y, jnp.stack(outputs, axis=1), atol=1e-6)
  _assert_trees_close(final_carry, carry)


@pytest.mark.parametrize("model", [
    LSTM(H), LSTM(H, layer_norm=False, unroll=2), LSTM(H, per_gate=True, num_layers=2),
    DEEP_BI_LSTM], ids=["layer_norm", "plain_unroll_2", "per_gate_2_layers", "bidirectional"])
def test_a_forward_pass_on_cpu_projects_each_step_input_as_the_hoisted_projection_does(model):
  # Without a gradient the CPU loop projects x_t itself; the differentiated pass
  # (and other platforms) project all steps before the loop: the same outputs.
  x = _sequences(time=7)
  params = _random_params(model, x, LENGTHS, seed=15)
  forward = lambda params: model.apply({"params": params}, x, LENGTHS)
  outputs = jax.jit(forward)(params)
  differentiated, _ = jax.jit(lambda params: jax.vjp(forward, params))(params)
  _assert_trees_close(outputs, differentiated, atol=1e-6)

  input_gates = "tensor<7x4x32xf32>"  # [time, batch, 4H]
  lowered = lambda platform: jax.export.export(jax.jit(forward), platforms=(platform,))(
      params).mlir_module()
  assert input_gates not in lowered("cpu")
  assert input_gates in lowered("cuda")


# Dropout.


def test_dropout_is_off_when_not_training():
  x = _sequences()
  dropped = LSTM(H, num_layers=2, dropout_rate=0.5, recurrent_dropout_rate=0.5)
  params = _random_params(dropped, x, seed=11)
  y_eval, _ = _apply(dropped)({"params": params}, x)
  y_plain, _ = _apply(LSTM(H, num_layers=2))({"params": params}, x)
  y_train, _ = _apply(dropped)(
      {"params": params}, x, train=True, rngs={"dropout": jax.random.key(0)}
  )
  np.testing.assert_array_equal(y_eval, y_plain)
  assert np.abs(np.asarray(y_train - y_eval)).max() > 1e-2


def test_recurrent_dropout_acts_only_through_h_fed_back():
  x = _sequences()
  model = LSTM(H, recurrent_dropout_rate=0.5)
  params = _random_params(model, x, seed=12)
  y_eval, _ = _apply(model)({"params": params}, x)
  train = functools.partial(_apply(model), {"params": params}, x, train=True)
  y_a, _ = train(rngs={"dropout": jax.random.key(0)})
  y_b, _ = train(rngs={"dropout": jax.random.key(1)})
  # h_0 = 0, so the first step cannot see the mask; later steps do.
  np.testing.assert_allclose(y_a[:, 0], y_eval[:, 0], atol=1e-6)
  assert np.abs(np.asarray(y_a[:, 1:] - y_eval[:, 1:])).max() > 1e-2
  assert np.abs(np.asarray(y_a - y_b)).max() > 1e-2


def test_recurrent_dropout_draws_one_mask_per_sequence_for_all_steps():
  # Dropping units of h before W_h with a mask m is running without dropout with
  # W_h's rows scaled by m / keep. Exactly one of the 2^H masks must reproduce
  # each sequence's training output: a mask redrawn per step would match none.
  h = 5
  model = LSTM(h, recurrent_dropout_rate=0.5)
  x = jnp.tile(_sequences(batch=1), (2, 1, 1))  # the same sequence twice
  params = _random_params(model, x, seed=13)
  y_train, _ = _apply(model)({"params": params}, x, train=True, rngs={"dropout": jax.random.key(2)})
  masks = jnp.asarray(list(itertools.product([0.0, 2.0], repeat=h)))

  def run_with_scaled_rows(mask):
    scaled = jax.tree.map(lambda a: a, params)
    kernel = params["layer_0"]["recurrent_proj"]["kernel"]
    scaled["layer_0"]["recurrent_proj"]["kernel"] = mask[:, None] * kernel
    return model.apply({"params": scaled}, x)[0]

  y_masked = jax.jit(jax.vmap(run_with_scaled_rows))(masks)
  error = np.abs(np.asarray(y_masked - y_train[None])).max(axis=(2, 3))  # [mask, batch]
  matches = [np.flatnonzero(error[:, b] < 1e-6) for b in range(2)]
  assert [len(m) for m in matches] == [1, 1], error.min(axis=0)
  assert matches[0][0] != matches[1][0]  # each sequence draws its own mask


# Gradients and precision.


def test_cell_gradients_match_finite_differences_in_float64():
  with jax.enable_x64(True):
    cell = LayerNormLSTMCell(3, dtype=jnp.float64, param_dtype=jnp.float64)
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(3, 2, 2)))
    carry = (jnp.asarray(rng.normal(size=(2, 3))), jnp.asarray(rng.normal(size=(2, 3))))
    params = _random_params(cell, carry, xs[0], seed=10)

    @jax.jit
    def loss(params, xs, carry):
      total = 0.0
      for x in xs:
        carry, h = cell.apply({"params": params}, carry, x)
        total = total + jnp.sum(h * jnp.arange(1.0, 4.0))
      return total + jnp.sum(jnp.sin(carry[0]))

    check_grads(loss, (params, xs, carry), order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("layer_norm", [True, False], ids=["layer_norm", "plain"])
def test_layer_gradients_match_finite_differences_in_float64(layer_norm):
  # The layer's backward pass computes W_h's gradient after the loop (a custom VJP):
  # checked here with lengths, recurrent dropout and initial carries all in play.
  with jax.enable_x64(True):
    model = LSTM(3, num_layers=2, layer_norm=layer_norm, per_gate=layer_norm,
                 recurrent_dropout_rate=0.4, dtype=jnp.float64, param_dtype=jnp.float64)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 4, 2)))
    lengths = np.array([4, 2, 0])
    carries = tuple((jnp.asarray(rng.normal(size=(3, 3))), jnp.asarray(rng.normal(size=(3, 3))))
                    for _ in range(2))
    params = _random_params(model, x, seed=12)

    @jax.jit
    def loss(params, x, carries):
      y, final = model.apply({"params": params}, x, lengths, train=True, initial_carries=carries,
                             rngs={"dropout": jax.random.key(3)})
      return jnp.sum(jnp.sin(3 * y)) + sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(final))

    check_grads(loss, (params, x, carries), order=1, modes=("rev",), eps=1e-6, atol=1e-6,
                rtol=1e-6)


@pytest.mark.parametrize("frozen", [False, True], ids=["dict", "frozen_dict"])
def test_bidirectional_layer_gradients_match_autodiff_of_flax_rnn_of_cells(frozen):
  # The flax RNN is differentiated by JAX itself; the layer by its custom VJP.
  x = _sequences()
  birnn = nn.Bidirectional(nn.RNN(LayerNormLSTMCell(H)), nn.RNN(LayerNormLSTMCell(H)))
  params = _random_params(birnn, x, seed=13)
  forward, backward = params["forward_rnn"]["cell"], params["backward_rnn"]["cell"]
  layer_params = {"layer_0": forward, "layer_0_backward": backward}
  if frozen:
    layer_params = flax.core.freeze(layer_params)
  weights = jax.random.normal(jax.random.key(14), (4, 6, 2 * H))

  def rnn_loss(forward, backward, x):
    y = birnn.apply({"params": {"forward_rnn": {"cell": forward},
                                "backward_rnn": {"cell": backward}}}, x, seq_lengths=LENGTHS)
    return jnp.sum(jnp.sin(y) * weights * (jnp.arange(6)[None, :, None] < LENGTHS[:, None, None]))

  def layer_loss(params, x):
    y, _ = BI_LSTM.apply({"params": params}, x, LENGTHS)
    return jnp.sum(jnp.sin(y) * weights)

  want_forward, want_backward, want_x = jax.grad(rnn_loss, argnums=(0, 1, 2))(forward, backward,
                                                                               x)
  got, got_x = jax.jit(jax.grad(layer_loss, argnums=(0, 1)))(layer_params, x)
  assert type(got) is type(layer_params)
  got = flax.core.unfreeze(got)
  _assert_trees_close(got["layer_0"], want_forward, atol=1e-5)
  _assert_trees_close(got["layer_0_backward"], want_backward, atol=1e-5)
  _assert_trees_close(got_x, want_x, atol=1e-5)


GRADIENT_CASES = [
    pytest.param(LSTMCell(H), LSTM(H, layer_norm=False), id="plain"),
    pytest.param(LayerNormLSTMCell(H), LSTM(H), id="layer_norm"),
    pytest.param(
        LayerNormLSTMCell(H, per_gate=True, normalize_carried_cell=True, epsilon=1e-2),
        LSTM(H, unroll=2, per_gate=True, normalize_carried_cell=True, epsilon=1e-2),
        id="per_gate_normalize_carried_cell_unroll_2",
    ),
]


def _gradients_of_layer_and_of_flax_rnn(cell, model, h_dtype=jnp.float32):
  """Gradients (params, inputs, initial carry: c float32, h `h_dtype`) of one loss
  through `model` (its written-out backward pass) and through flax's `nn.RNN(cell)`
  (JAX's autodiff)."""
  x = _sequences()
  rnn = nn.RNN(cell, return_carry=True)
  params = _random_params(rnn, x, seed=16)["cell"]
  rng = np.random.default_rng(17)
  carry = tuple(jnp.asarray(rng.normal(size=(4, H)), d) for d in (jnp.float32, h_dtype))
  weights = jax.random.normal(jax.random.key(18), (4, 6, H))
  valid = jnp.arange(6)[None, :, None] < LENGTHS[:, None, None]

  def loss(y, final):
    y = jnp.where(valid, y, 0).astype(jnp.float32)
    return (jnp.sum(jnp.sin(3 * y) * weights) + jnp.sum(jnp.cos(final[0]))
            + jnp.sum(jnp.sin(final[1].astype(jnp.float32))))

  def rnn_loss(params, x, carry):
    final, y = rnn.apply({"params": {"cell": params}}, x, initial_carry=carry,
                         seq_lengths=LENGTHS)
    return loss(y, final)

  def layer_loss(params, x, carry):
    y, (final,) = model.apply({"params": {"layer_0": params}}, x, LENGTHS,
                              initial_carries=(carry,))
    return loss(y, final)

  grad = lambda f: jax.jit(jax.grad(f, argnums=(0, 1, 2)))(params, x, carry)
  return grad(layer_loss), grad(rnn_loss)


@pytest.mark.parametrize("cell, model", GRADIENT_CASES)
def test_layer_gradients_match_autodiff_of_flax_rnn_of_the_cell(cell, model):
  got, want = _gradients_of_layer_and_of_flax_rnn(cell, model)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=2e-5, rtol=1e-5), got, want)


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
def test_bfloat16_layer_gradients_stay_close_to_autodiff_of_the_bfloat16_cell(layer_norm):
  cell_type = LayerNormLSTMCell if layer_norm else LSTMCell
  got, want = _gradients_of_layer_and_of_flax_rnn(
      cell_type(H, dtype=jnp.bfloat16), LSTM(H, layer_norm=layer_norm, dtype=jnp.bfloat16),
      jnp.bfloat16)
  exact, _ = _gradients_of_layer_and_of_flax_rnn(cell_type(H), LSTM(H, layer_norm=layer_norm))
  # The two bfloat16 computations round in different places: measured, they differ
  # by at most 0.5% of each gradient's largest value, and autodiff's bfloat16
  # gradients differ from its float32 ones by up to 2%.
  assert [g.dtype for g in jax.tree.leaves(got)] == [w.dtype for w in jax.tree.leaves(want)]
  for g, w, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(exact)):
    g, w, e = (np.asarray(a, np.float32) for a in (g, w, e))
    assert np.abs(g - w).max() <= 0.01 * np.abs(e).max()


def test_bfloat16_compute_with_float32_params_stays_finite():
  x = 30.0 * _sequences(time=24)
  model = LSTM(H, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, LENGTHS)["params"]
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
  params = _random_params(model, x, LENGTHS, seed=14)

  def loss(params):
    y, carries = model.apply({"params": params}, x, LENGTHS)
    return jnp.sum(jnp.square(y.astype(jnp.float32))), (y, carries)

  (_, (y, carries)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert y.dtype == jnp.bfloat16
  assert carries[0][0].dtype == jnp.float32  # c is carried in float32
  assert np.all(np.isfinite(np.asarray(y, np.float32)))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))
