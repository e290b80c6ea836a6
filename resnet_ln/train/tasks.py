"""Tasks: what the model is fed, its loss, and the metrics, as sums over examples.

Metrics are returned as sums with a `count` so that eval with padded batches and
any number of devices or hosts is exact: the host divides once at the end.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

TASKS = ("classification", "language_modeling")


@dataclasses.dataclass(frozen=True)
class Task:
  """A task: the batch key holding the model input and how outputs are scored.

  Attributes:
    name: 'classification' or 'language_modeling'.
    input_key: the batch entry passed to the model.
    label_key: the batch entry holding integer targets.
    label_smoothing: mass spread uniformly over all classes (classification).
  """

  name: str
  input_key: str
  label_key: str
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
    if self.name == "classification" and logits.shape[-1] > 5:
      top5 = jax.lax.top_k(logits, 5)[1]
      sums["top5_accuracy"] = jnp.sum(jnp.any(top5 == labels[..., None], -1) * weights)
    return sums

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    """Means from sums (and bits per character for language models)."""
    count = float(sums.get("count", 0.0))  # 0 when every step of a window was skipped.
    out = {k: float(v) / max(count, 1.0) for k, v in sums.items()
           if k not in ("count", "nonfinite")}
    if self.name == "language_modeling" and "loss" in out:
      out["bits_per_char"] = out["loss"] / math.log(2)
    out["examples" if self.name == "classification" else "tokens"] = count
    return out


def get_task(name: str, label_smoothing: float = 0.0) -> Task:
  """The task for a dataset's `DatasetInfo.task`."""
  if name == "classification":
    return Task(name, "image", "label", label_smoothing)
  if name == "language_modeling":
    return Task(name, "inputs", "targets", label_smoothing)
  raise ValueError(f"Unknown task {name!r}; known tasks: {TASKS}.")
