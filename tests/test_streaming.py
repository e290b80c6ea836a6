"""Streaming LSTMs: sequences in chunks with carried state, and generation one token at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_ln import models
from resnet_ln.models import LSTM, CharLM, SequenceClassifier
from resnet_ln.models.generate import sample_logits

BATCH, TIME, FEATURES = 3, 11, 5
INPUTS = jax.random.normal(jax.random.PRNGKey(0), (BATCH, TIME, FEATURES))


def _tree_close(a, b, atol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5), a, b)


@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("seq_lengths", [None, [11, 4, 0]])
def test_two_chunks_with_carried_state_equal_one_call(layer_norm, seq_lengths):
  lstm = LSTM(8, num_layers=2, layer_norm=layer_norm)
  variables = lstm.init(jax.random.PRNGKey(1), INPUTS)
  whole, whole_carries = lstm.apply(variables, INPUTS, seq_lengths)
  split = 6
  lengths = [None, None] if seq_lengths is None else [
      np.clip(np.array(seq_lengths), 0, split), np.clip(np.array(seq_lengths) - split, 0, None)]
  first, carries = lstm.apply(variables, INPUTS[:, :split], lengths[0])
  second, final = lstm.apply(variables, INPUTS[:, split:], lengths[1], initial_carries=carries)
  np.testing.assert_allclose(np.concatenate([first, second], 1), whole, atol=1e-5)
  _tree_close(final, whole_carries)


def test_initial_carries_are_the_zero_carries_a_call_starts_from():
  lstm = LSTM(8, num_layers=2, dtype=jnp.bfloat16)
  variables = lstm.init(jax.random.PRNGKey(1), INPUTS)
  zeros = lstm.initial_carries(BATCH)
  assert [(c.shape, c.dtype, h.dtype) for c, h in zeros] == [
      ((BATCH, 8), jnp.float32, jnp.bfloat16)] * 2
  _tree_close(lstm.apply(variables, INPUTS, initial_carries=zeros), lstm.apply(variables, INPUTS))


def test_bidirectional_stack_refuses_initial_carries():
  lstm = LSTM(8, bidirectional=True)
  variables = lstm.init(jax.random.PRNGKey(1), INPUTS)
  _, carries = lstm.apply(variables, INPUTS)
  with pytest.raises(ValueError, match="bidirectional"):
    lstm.apply(variables, INPUTS, initial_carries=carries)
  with pytest.raises(ValueError, match="bidirectional"):
    lstm.initial_carries(BATCH)


def test_initial_carries_need_one_carry_per_layer():
  lstm = LSTM(8, num_layers=2)
  variables = lstm.init(jax.random.PRNGKey(1), INPUTS)
  with pytest.raises(ValueError, match="one .c, h. per layer"):
    lstm.apply(variables, INPUTS, initial_carries=lstm.initial_carries(BATCH)[:1])


@pytest.fixture(scope="module")
def char_lm():
  model = CharLM(vocab_size=13, embed_dim=6, features=16, num_layers=2)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 17), 0, 13)
  return model, model.init(jax.random.PRNGKey(3), tokens), tokens


def test_char_lm_one_token_at_a_time_equals_one_call_at_every_position(char_lm):
  model, variables, tokens = char_lm
  whole = model.apply(variables, tokens)
  carries = model.initial_carries(tokens.shape[0])
  step = jax.jit(lambda token, carries: model.apply(variables, token, initial_carries=carries,
                                                    return_carries=True))
  for t in range(tokens.shape[1]):
    logits, carries = step(tokens[:, t:t + 1], carries)
    np.testing.assert_allclose(logits[:, 0], whole[:, t], atol=1e-5, err_msg=f"position {t}")


def test_sequence_models_name_their_parts(char_lm):
  _, variables, _ = char_lm
  assert set(variables["params"]) == {"embed", "lstm", "head"}
  classifier = SequenceClassifier(num_classes=3, features=8)
  assert set(classifier.init(jax.random.PRNGKey(0), INPUTS)["params"]) == {"lstm", "head"}


def test_generate_continues_from_the_model_distribution_at_the_prompt(char_lm):
  model, variables, tokens = char_lm
  prompt = tokens[:, :5]
  generated, logits = models.generate(model, variables, prompt, 8, jax.random.PRNGKey(0),
                                      return_logits=True)
  assert generated.shape == (2, 8) and generated.dtype == jnp.int32
  # Step 0 samples from the model's softmax at the end of the prompt; every
  # later step from the model's logits over the prompt and the tokens so far.
  full = model.apply(variables, jnp.concatenate([prompt, generated], 1))
  np.testing.assert_allclose(logits, full[:, 4:-1], atol=1e-5)


def test_generate_is_deterministic_for_a_key_and_changes_with_it(char_lm):
  model, variables, tokens = char_lm
  runs = [models.generate(model, variables, tokens[:, :3], 20, jax.random.PRNGKey(seed))
          for seed in (0, 0, 1)]
  np.testing.assert_array_equal(runs[0], runs[1])
  assert not np.array_equal(runs[0], runs[2])


def test_generate_reports_tokens_in_order_as_they_come(char_lm):
  model, variables, tokens = char_lm
  seen = []
  generated = models.generate(model, variables, tokens[:, :3], 6, jax.random.PRNGKey(0),
                              on_tokens=lambda t: seen.append(np.asarray(t)))
  jax.effects_barrier()
  np.testing.assert_array_equal(np.stack(seen, 1), generated)


def test_sample_logits_keeps_the_top_k_and_argmax_at_temperature_0():
  logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]] * 2000))
  top2 = sample_logits(jax.random.PRNGKey(0), logits, temperature=1.0, top_k=2)
  assert set(np.unique(top2)) == {2, 3}
  assert abs(np.mean(top2 == 3) - 4 / 7) < 0.05  # Renormalised over the two kept.
  assert set(np.unique(sample_logits(jax.random.PRNGKey(0), logits, temperature=0))) == {3}
  with pytest.raises(ValueError, match="top_k=5 is more than the vocabulary"):
    sample_logits(jax.random.PRNGKey(0), logits, top_k=5)
