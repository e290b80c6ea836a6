"""CharLM and SequenceClassifier: shapes, registry, LayerNorm options, lengths, dropout."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_ln.models import CharLM
from resnet_ln.models import LSTM
from resnet_ln.models import SequenceClassifier
from resnet_ln.models import get_model


@functools.lru_cache(maxsize=None)
def _init(module):
  return jax.jit(module.init, static_argnames="train")


@functools.lru_cache(maxsize=None)
def _apply(module):
  return jax.jit(module.apply, static_argnames="train")


def _random_params(module, *args):
  """N(0, 0.5^2) values of `module`'s parameter shapes, with no initializer compiled."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(
      treedef, [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  )


TOKENS = jax.random.randint(jax.random.key(0), (2, 5), 0, 11, jnp.int32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_char_lm_logits_are_float32_per_step_with_float32_params(dtype):
  model = CharLM(vocab_size=11, embed_dim=4, features=8, num_layers=2, dtype=dtype)
  params = _init(model)(jax.random.key(1), TOKENS)["params"]
  logits = _apply(model)({"params": params}, TOKENS)
  assert logits.shape == (2, 5, 11)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_char_lm_position_t_sees_no_later_token():
  model = CharLM(vocab_size=11, embed_dim=4, features=8, num_layers=2)
  params = _init(model)(jax.random.key(1), TOKENS)["params"]
  changed = TOKENS.at[:, 3].set((TOKENS[:, 3] + 1) % 11)
  logits = _apply(model)({"params": params}, TOKENS)
  logits_changed = _apply(model)({"params": params}, changed)
  np.testing.assert_array_equal(logits[:, :3], logits_changed[:, :3])
  assert np.abs(np.asarray(logits[:, 3:] - logits_changed[:, 3:])).max() > 0


def test_char_lm_dropout_is_deterministic_unless_training():
  model = CharLM(vocab_size=11, embed_dim=4, features=8, num_layers=1, dropout_rate=0.5)
  no_dropout = CharLM(vocab_size=11, embed_dim=4, features=8, num_layers=1)
  params = _random_params(model, TOKENS)
  apply = functools.partial(_apply(model), {"params": params}, TOKENS)
  np.testing.assert_array_equal(apply(), _apply(no_dropout)({"params": params}, TOKENS))
  train_a = apply(train=True, rngs={"dropout": jax.random.key(0)})
  train_b = apply(train=True, rngs={"dropout": jax.random.key(1)})
  assert np.abs(np.asarray(train_a - apply())).max() > 1e-3
  assert np.abs(np.asarray(train_a - train_b)).max() > 1e-3


def test_registry_builds_models_with_documented_defaults():
  lm = get_model("char_lm", vocab_size=256)
  classifier = get_model("seq_classifier", num_classes=10)
  assert isinstance(lm, CharLM) and isinstance(classifier, SequenceClassifier)
  assert (lm.embed_dim, lm.features, lm.num_layers, lm.layer_norm) == (64, 256, 2, True)
  assert (classifier.features, classifier.num_layers, classifier.layer_norm) == (128, 1, True)


@pytest.mark.parametrize("name, kwargs, inputs", [
    ("char_lm", dict(vocab_size=7), jnp.zeros((1, 3), jnp.int32)),
    ("seq_classifier", dict(num_classes=3), jnp.zeros((1, 3, 2))),
])
def test_layer_norm_false_gives_plain_lstm_baseline(name, kwargs, inputs):
  def lstm_params(layer_norm):
    model = get_model(name, features=4, layer_norm=layer_norm, **kwargs)
    shapes = jax.eval_shape(model.init, jax.random.key(0), inputs)["params"]
    return shapes["lstm"]["layer_0"]

  assert "cell_scale" in lstm_params(True) and "scale" in lstm_params(True)["input_proj"]
  plain = lstm_params(False)
  assert set(plain) == {"input_proj", "recurrent_proj", "gate_bias"}
  assert set(plain["input_proj"]) == set(plain["recurrent_proj"]) == {"kernel"}


CLASSIFIER = SequenceClassifier(num_classes=3, features=8)
SEQUENCES = jax.random.normal(jax.random.key(2), (3, 6, 4))


LN_OPTIONS = dict(per_gate=True, normalize_carried_cell=True, epsilon=1e-2)


def test_char_lm_passes_the_layer_norm_options_to_its_lstm():
  model = CharLM(vocab_size=11, embed_dim=4, features=8, **LN_OPTIONS)
  params = _random_params(model, TOKENS)
  x = nn.Embed(11, 4).apply({"params": params["embed"]}, TOKENS)
  x, _ = LSTM(8, num_layers=2, **LN_OPTIONS).apply({"params": params["lstm"]}, x)
  expected = nn.Dense(11).apply({"params": params["head"]}, x)
  logits = _apply(model)({"params": params}, TOKENS)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  default = CharLM(vocab_size=11, embed_dim=4, features=8)
  assert np.abs(np.asarray(logits - _apply(default)({"params": params}, TOKENS))).max() > 1e-3


def test_classifier_passes_the_layer_norm_options_to_its_lstm():
  model = SequenceClassifier(num_classes=3, features=8, **LN_OPTIONS)
  params = _random_params(model, SEQUENCES)
  _, carries = LSTM(8, **LN_OPTIONS).apply({"params": params["lstm"]}, SEQUENCES)
  expected = nn.Dense(3).apply({"params": params["head"]}, carries[-1][1])
  logits = _apply(model)({"params": params}, SEQUENCES)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  default = SequenceClassifier(num_classes=3, features=8)
  assert np.abs(np.asarray(logits - _apply(default)({"params": params}, SEQUENCES))).max() > 1e-3


def test_classifier_reads_images_row_by_row():
  images = SEQUENCES.reshape(3, 6, 2, 2)
  params = _random_params(CLASSIFIER, images)
  logits = _apply(CLASSIFIER)({"params": params}, images)
  assert logits.shape == (3, 3) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, _apply(CLASSIFIER)({"params": params}, SEQUENCES))


def test_classifier_logits_come_from_each_sequences_last_valid_step():
  lengths = jnp.array([6, 2, 4])
  params = _random_params(CLASSIFIER, SEQUENCES, lengths)
  logits = _apply(CLASSIFIER)({"params": params}, SEQUENCES, lengths)
  noise = 100.0 * jax.random.normal(jax.random.key(3), SEQUENCES.shape)
  repadded = jnp.where(jnp.arange(6)[None, :, None] < lengths[:, None, None], SEQUENCES, noise)
  np.testing.assert_array_equal(logits, _apply(CLASSIFIER)({"params": params}, repadded, lengths))
  truncated = _apply(CLASSIFIER)({"params": params}, SEQUENCES[1:2, :2])
  np.testing.assert_allclose(logits[1:2], truncated, atol=1e-6)
  unpadded = _apply(CLASSIFIER)({"params": params}, SEQUENCES)
  assert np.abs(np.asarray(logits[1] - unpadded[1])).max() > 0


def test_bidirectional_bfloat16_classifier_needs_no_dropout_rng_at_eval():
  model = SequenceClassifier(
      num_classes=5, features=8, num_layers=2, bidirectional=True, dropout_rate=0.5,
      dtype=jnp.bfloat16,
  )
  params = _init(model)(jax.random.key(1), SEQUENCES)["params"]
  assert params["head"]["kernel"].shape == (16, 5)
  logits = _apply(model)({"params": params}, SEQUENCES, jnp.array([6, 2, 4]))
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_classifier_rejects_inputs_of_other_ranks():
  with pytest.raises(ValueError, match=r"got shape \(3, 4\)"):
    jax.eval_shape(CLASSIFIER.init, jax.random.key(0), jnp.zeros((3, 4)))
