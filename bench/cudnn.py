"""The reference point for the LSTMs: JAX's cuDNN LSTM (`jax.experimental.rnn`) at char_lm's sizes."""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bench import timing
from bench.workloads import Options, Workload
from resnet_ln.train import parallel as parallel_lib


class CudnnCharLM(nn.Module):
  """`char_lm`'s shapes on the cuDNN LSTM that JAX ships: embedding, LSTM stack, projection.

  No LayerNorm (cuDNN has none), float32 only (`jax.experimental.rnn`'s limit),
  GPU only.
  """

  vocab_size: int
  embed_dim: int
  features: int
  num_layers: int

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    """Next-token logits, [batch, time, vocab_size] float32, from tokens [batch, time]."""
    from jax.experimental import rnn  # pylint: disable=g-import-not-at-top

    x = nn.Embed(self.vocab_size, self.embed_dim)(tokens)
    sizes = dict(input_size=self.embed_dim, hidden_size=self.features, num_layers=self.num_layers)
    # Named `kernel` so that the optimiser's weight-decay mask treats it as the
    # Flax LSTM's kernels.
    weights = self.param(
        "kernel", lambda key: rnn.init_lstm_weight(key, bidirectional=False, **sizes))
    carry = jnp.zeros((self.num_layers, tokens.shape[0], self.features), jnp.float32)
    lengths = jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32)
    y, _, _ = rnn.lstm(x, carry, carry, weights, lengths, dropout=0.0, bidirectional=False, **sizes)
    return nn.Dense(self.vocab_size)(y)


def cudnn_skip_reason() -> str | None:
  """Why JAX's cuDNN LSTM cannot run in this process, or None where it can (a GPU)."""
  backend = jax.default_backend()
  if backend != "gpu":
    return f"jax.experimental.rnn.lstm needs cuDNN (a GPU); backend is {backend}."
  return None


def cudnn_reference(workload: Workload, parallel: parallel_lib.Parallelism,
                    options: Options) -> dict[str, Any]:
  """Times `CudnnCharLM` at the workload's sizes, with the same step and optimiser."""
  reason = cudnn_skip_reason()
  if reason:
    return {"skipped": reason}
  kwargs = workload.model_kwargs
  model = CudnnCharLM(kwargs["vocab_size"], kwargs["embed_dim"], kwargs["features"],
                      kwargs["num_layers"])
  reference = dataclasses.replace(workload, model_kwargs={**kwargs, "layer_norm": False})
  try:
    result = timing.measure(model, reference, parallel, options, "float32")
  except Exception as error:  # pylint: disable=broad-except
    # The reference must never cost the main figures, whatever cuDNN says.
    return {"error": f"{type(error).__name__}: {error}"}
  return {"model": "jax.experimental.rnn.lstm (cuDNN)", "dtype": "float32",
          "note": "float32 only (jax.experimental.rnn); no LayerNorm", **result}
