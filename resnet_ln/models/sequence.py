"""Sequence models on the (LayerNorm) LSTM: a character language model and a classifier.

Both name their parts `embed` (CharLM), `lstm` and `head`. Checkpoints written
when they had Flax's default names (`Embed_0`, `LSTM_0`, `Dense_0`, `LEGACY_NAMES`)
are read under the new names by every reader of a checkpoint (resuming, `init_from`,
`resnet_ln.load_run`).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_ln.models.lstm import LSTM
from resnet_ln.models.lstm import Carry
from resnet_ln.models.lstm import _check_at_least_one
from resnet_ln.models.lstm import _check_rate
from resnet_ln.models.registry import register_model

Dtype = Any

# The submodules' names before they were named (Flax's defaults for the first
# Embed, LSTM and Dense), by their names now.
LEGACY_NAMES = {"Embed_0": "embed", "LSTM_0": "lstm", "Dense_0": "head"}


def rename_legacy(tree: Any, expected_params: Any) -> Any:
  """`tree` (a checkpoint's state or variables, nested dicts) under the current names.

  Renames `LEGACY_NAMES` in every dict whose keys are exactly the former top-level
  parameter names (the parameters and the optimiser's copies of their tree), and
  only when `expected_params` (the model's parameter tree) has the new names and
  `tree["params"]` the old: a model that itself uses Flax's default names keeps them.
  """
  old = set(tree.get("params", {})) if isinstance(tree, dict) else set()
  new = set(expected_params)
  if "LSTM_0" not in old or {LEGACY_NAMES.get(k, k) for k in old} != new:
    return tree

  def rename(node):
    if isinstance(node, dict):
      renamed = set(node) == old
      return {(LEGACY_NAMES.get(k, k) if renamed else k): rename(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
      return type(node)(rename(v) for v in node)
    return node

  return rename(tree)


class LSTMOptions(nn.Module):
  """The LSTM options a sequence model declares once and hands to its `LSTM`.

  Every field here reaches the model's `LSTM` through `_lstm`, so a new option
  is one line here (and the `LSTM` field it sets). The fields are keyword-only;
  a model redeclares `features` and `num_layers` to change their defaults.

  Attributes:
    features: LSTM hidden size (per direction).
    num_layers: stacked LSTM layers.
    layer_norm: LayerNorm LSTM if True, else the plain LSTM baseline.
    dropout_rate: dropout between stacked layers (the models also apply it to
      their embeddings or outputs; train only).
    recurrent_dropout_rate: dropout on h before W_h, one mask per sequence.
    unroll: scan unroll factor.
    per_gate, normalize_carried_cell, epsilon: see `LayerNormLSTMCell`.
    dtype: compute dtype (logits are returned in float32).
    param_dtype: parameter storage dtype.
  """

  _: dataclasses.KW_ONLY
  features: int = 128
  num_layers: int = 1
  layer_norm: bool = True
  dropout_rate: float = 0.0
  recurrent_dropout_rate: float = 0.0
  unroll: int = 1
  per_gate: bool = False
  normalize_carried_cell: bool = False
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self) -> None:
    # Refused when the model is built, not deep inside its first trace.
    _check_at_least_one(self, "features", "num_layers", "unroll")
    _check_rate(self, "dropout_rate", "recurrent_dropout_rate")
    super().__post_init__()

  def _lstm(self, **kwargs: Any) -> LSTM:
    """The model's `LSTM`, built from every option field (plus `kwargs`)."""
    options = {field.name: getattr(self, field.name) for field in _LSTM_OPTION_FIELDS}
    return LSTM(**options, **kwargs)


# The fields of `LSTMOptions` itself, without Flax's `parent` and `name`.
_LSTM_OPTION_FIELDS = tuple(
    f for f in dataclasses.fields(LSTMOptions) if f.name not in ("parent", "name")
)


@register_model("char_lm")
class CharLM(LSTMOptions):
  """Character-level language model: embedding, LSTM stack, per-step softmax logits.

  Attributes:
    vocab_size: number of token ids (256 for bytes).
    embed_dim: embedding size.
    features: LSTM hidden size (default 256).
    num_layers: stacked LSTM layers (default 2).
    The other options (layer_norm, dropout_rate, recurrent_dropout_rate, unroll,
    per_gate, normalize_carried_cell, epsilon, dtype, param_dtype): see
    `LSTMOptions`; dropout also applies to the embeddings and before the output
    projection.
  """

  vocab_size: int
  embed_dim: int = 64
  _: dataclasses.KW_ONLY
  features: int = 256
  num_layers: int = 2

  def __post_init__(self) -> None:
    _check_at_least_one(self, "vocab_size", "embed_dim")
    super().__post_init__()

  @nn.nowrap
  def initial_carries(self, batch_size: int) -> tuple[Carry, ...]:
    """Zero LSTM carries for `__call__(initial_carries=...)`; see `LSTM.initial_carries`."""
    return self._lstm(parent=None).initial_carries(batch_size)

  @nn.compact
  def __call__(
      self,
      tokens: jax.Array,
      train: bool = False,
      initial_carries: tuple[Carry, ...] | None = None,
      return_carries: bool = False,
  ) -> jax.Array | tuple[jax.Array, tuple[Carry, ...]]:
    """Next-token logits.

    Continuing from the carries of the text so far (`initial_carries`) gives the
    logits that one call over the whole text gives at these positions: text can
    be fed in chunks, or one token at a time when generating.

    Args:
      tokens: [batch, time] int32 token ids.
      train: enables dropout (needs a 'dropout' rng when a rate is > 0).
      initial_carries: the LSTM carries after the preceding tokens (a previous
        call's, with `return_carries`); None starts a new text.
      return_carries: also return the LSTM carries after the last token.

    Returns:
      logits: [batch, time, vocab_size] float32; position t predicts token t + 1.
      With `return_carries`, (logits, carries).
    """
    x = nn.Embed(
        self.vocab_size, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
        name="embed",
    )(tokens)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x, carries = self._lstm(name="lstm")(x, train=train, initial_carries=initial_carries)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(
        self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
    )(x).astype(jnp.float32)
    return (logits, carries) if return_carries else logits


@register_model("seq_classifier")
class SequenceClassifier(LSTMOptions):
  """Classifies a sequence from its last valid LSTM hidden state.

  Image batches [batch, height, width, channels] are read row by row, as
  sequences of `height` steps of `width * channels` features.

  Attributes:
    num_classes: number of classes.
    features: LSTM hidden size per direction (default 128).
    num_layers: stacked LSTM layers (default 1).
    bidirectional: also read each sequence backwards; the classifier sees the
      forward h at the last valid step and the backward h at step 0.
    The other options (layer_norm, dropout_rate, recurrent_dropout_rate, unroll,
    per_gate, normalize_carried_cell, epsilon, dtype, param_dtype): see
    `LSTMOptions`; dropout also applies before the classifier.
  """

  num_classes: int
  _: dataclasses.KW_ONLY
  features: int = 128
  num_layers: int = 1
  bidirectional: bool = False

  def __post_init__(self) -> None:
    _check_at_least_one(self, "num_classes")
    super().__post_init__()

  @nn.compact
  def __call__(
      self, inputs: jax.Array, seq_lengths: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    """Class logits.

    Args:
      inputs: [batch, time, features], or images [batch, height, width, channels].
      seq_lengths: optional [batch] int valid lengths (rows, for images); see `LSTM`.
      train: enables dropout (needs a 'dropout' rng when a rate is > 0).

    Returns:
      logits: [batch, num_classes] float32.
    """
    if inputs.ndim == 4:
      inputs = inputs.reshape(inputs.shape[:2] + (-1,))
    elif inputs.ndim != 3:
      raise ValueError(
          "SequenceClassifier expects [batch, time, features] or "
          f"[batch, height, width, channels] inputs, got shape {inputs.shape}."
      )
    _, carries = self._lstm(bidirectional=self.bidirectional, name="lstm")(
        inputs.astype(self.dtype), seq_lengths, train=train
    )
    if self.bidirectional:
      (_, h_forward), (_, h_backward) = carries[-1]
      h = jnp.concatenate([h_forward, h_backward], axis=-1)
    else:
      _, h = carries[-1]
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    logits = nn.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
    )(h)
    return logits.astype(jnp.float32)
