"""Sampling text from a `CharLM`: the prompt in one call, then one token per step in a scan.

    tokens = generate(model, variables, prompt_ids, length=500, rng=jax.random.PRNGKey(0),
                      temperature=0.8)

The whole decode loop is one jitted `lax.scan`: each step feeds the last token
and the LSTM carries to the model (`CharLM(initial_carries=..., return_carries=True)`),
so a step costs one LSTM step, not a pass over the text so far.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def sample_logits(rng: jax.Array, logits: jax.Array, temperature: float = 1.0,
                  top_k: int = 0) -> jax.Array:
  """One token id per row of `logits` [batch, vocab]: from softmax(logits / temperature),
  restricted to the `top_k` most likely (0: all); temperature 0 takes the argmax."""
  if top_k > logits.shape[-1]:
    raise ValueError(f"top_k={top_k} is more than the vocabulary, {logits.shape[-1]} tokens.")
  if temperature == 0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits).astype(jnp.int32)


def generate(model: nn.Module, variables: Any, prompt_ids: jax.Array, length: int,
             rng: jax.Array, temperature: float = 1.0, top_k: int = 0,
             on_tokens: Callable[[Any], None] | None = None,
             return_logits: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Continues each prompt by `length` sampled tokens.

  Args:
    model: a `CharLM` (any model taking `initial_carries` and `return_carries`).
    variables: its variables (`{'params': ...}`).
    prompt_ids: [batch, prompt_len] int token ids, prompt_len >= 1.
    length: tokens to generate.
    rng: PRNG key; the same key gives the same text.
    temperature: softmax temperature (0: greedy).
    top_k: sample among the k most likely tokens only (0: all).
    on_tokens: called on the host with each step's tokens (NumPy [batch]) in
      order, as they are generated (for printing as it goes).
    return_logits: also return the logits each token was sampled from.

  Returns:
    [batch, length] int32 tokens; with `return_logits`, also their logits
    [batch, length, vocab] float32 (step 0's are the model's at the prompt's end).

  Raises:
    ValueError: an empty or non-[batch, time] prompt, a negative length, temperature or
      top_k, or a top_k above the vocabulary size.
  """
  prompt_ids = jnp.asarray(prompt_ids)
  if prompt_ids.ndim != 2 or prompt_ids.shape[1] < 1:
    raise ValueError(f"prompt_ids must be [batch, prompt_len] with prompt_len >= 1, got shape "
                     f"{prompt_ids.shape}.")
  if length < 0 or temperature < 0 or top_k < 0:
    raise ValueError(f"length, temperature and top_k must be >= 0, got {length}, "
                     f"{temperature}, {top_k}.")
  tokens, logits = _generate(model, variables, prompt_ids.astype(jnp.int32), rng, length=length,
                             temperature=float(temperature), top_k=int(top_k),
                             on_tokens=on_tokens)
  return (tokens, logits) if return_logits else tokens


@functools.partial(jax.jit, static_argnames=("model", "length", "temperature", "top_k",
                                             "on_tokens"))
def _generate(model: nn.Module, variables: Any, prompt_ids: jax.Array, rng: jax.Array, *,
              length: int, temperature: float, top_k: int,
              on_tokens: Callable[[Any], None] | None) -> tuple[jax.Array, jax.Array]:
  logits, carries = model.apply(variables, prompt_ids, train=False, return_carries=True)

  def step(state, index):
    carries, last_logits = state
    token = sample_logits(jax.random.fold_in(rng, index), last_logits, temperature, top_k)
    if on_tokens is not None:
      jax.debug.callback(on_tokens, token, ordered=True)
    next_logits, carries = model.apply(variables, token[:, None], train=False,
                                       initial_carries=carries, return_carries=True)
    return (carries, next_logits[:, 0]), (token, last_logits)

  _, (tokens, step_logits) = jax.lax.scan(step, (carries, logits[:, -1]), jnp.arange(length))
  return jnp.swapaxes(tokens, 0, 1), jnp.swapaxes(step_logits, 0, 1)
