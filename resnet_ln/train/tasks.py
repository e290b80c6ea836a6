"""Tasks: what the model is fed, its loss, and the metrics, as sums over examples.

Metrics are returned as sums with a `count` so that eval with padded batches and
any number of devices or hosts is exact: the host divides once at the end.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

@dataclasses.dataclass(frozen=True)
class Task:
  """A task: what the model is fed, what it is sized by, and how outputs are scored.

  Attributes:
    name: 'classification' or 'language_modeling'.
    input_key: the batch entry passed to the model.
    label_key: the batch entry holding integer targets.
    input_dtype: the model input's dtype ('float32' images, 'int32' tokens).
    size_argument: the model constructor argument that takes the dataset's
      `num_classes` ('num_classes', or 'vocab_size' for language models).
    count_name: what the eval summary counts ('examples' or 'tokens').
    top5: whether metrics include top-5 accuracy (with more than 5 classes).
    label_smoothing: mass spread uniformly over all classes (classification).
  """

  name: str
  input_key: str
  label_key: str
  input_dtype: str
  size_argument: str
  count_name: str
  top5: bool
  label_smoothing: float = 0.0

  def per_example_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy per example (per token for language models), in float32.

    Args:
      logits: [..., classes]; cast to float32 first (bfloat16 logits into a
        softmax lose the small probabilities).
      labels: [...] integer targets.
    """
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes)
    if self.label_smoothing:
      targets = optax.smooth_labels(targets, self.label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)

  def metric_sums(self, logits: jax.Array, labels: jax.Array,
                  mask: jax.Array) -> dict[str, jax.Array]:
    """Sums over the unmasked examples (tokens): loss, accuracy, top-5, count.

    Args:
      logits: [batch, classes] or [batch, time, vocab].
      labels: [batch] or [batch, time].
      mask: [batch], 1 for real examples and 0 for eval padding.
    """
    logits = logits.astype(jnp.float32)
    loss = self.per_example_loss(logits, labels)
    weights = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (labels.ndim - 1)), labels.shape)
    correct = jnp.argmax(logits, -1) == labels
    sums = {
        "loss": jnp.sum(loss * weights),
        "accuracy": jnp.sum(correct * weights),
        "count": jnp.sum(weights),
    }
    if self.top5 and logits.shape[-1] > 5:
      top5 = jax.lax.top_k(logits, 5)[1]
      sums["top5_accuracy"] = jnp.sum(jnp.any(top5 == labels[..., None], -1) * weights)
    return sums

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    """Means from sums (and bits per character for language models)."""
    count = float(sums.get("count", 0.0))  # 0 when every step of a window was skipped.
    out = {k: float(v) / max(count, 1.0) for k, v in sums.items()
           if k not in ("count", "nonfinite")}
    if self.count_name == "tokens" and "loss" in out:
      out["bits_per_char"] = out["loss"] / math.log(2)
    out[self.count_name] = count
    return out


_TASKS = {
    "classification": dict(input_key="image", label_key="label", input_dtype="float32",
                           size_argument="num_classes", count_name="examples", top5=True),
    "language_modeling": dict(input_key="inputs", label_key="targets", input_dtype="int32",
                              size_argument="vocab_size", count_name="tokens", top5=False),
}
TASKS = tuple(_TASKS)


def get_task(name: str, label_smoothing: float = 0.0) -> Task:
  """The task for a dataset's `DatasetInfo.task`."""
  if name not in _TASKS:
    raise ValueError(f"Unknown task {name!r}; known tasks: {TASKS}.")
  return Task(name=name, label_smoothing=label_smoothing, **_TASKS[name])
