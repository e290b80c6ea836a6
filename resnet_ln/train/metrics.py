"""Where metrics go: the console (absl logging), `workdir/metrics.jsonl` and
TensorBoard event files. Only process 0 writes files."""

import json
import os
from typing import Any

import jax
import tensorflow as tf
from absl import logging


class MetricWriter:
  """Writes one record per logged train step and per evaluation."""

  def __init__(self, workdir: str):
    self.is_primary = jax.process_index() == 0
    self._jsonl = None
    self._summaries = {}
    if self.is_primary:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._summaries = {
          split: tf.summary.create_file_writer(os.path.join(workdir, "tensorboard", split))
          for split in ("train", "eval")
      }

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    """Logs `metrics` (floats) for `split` ('train' or 'eval') at `step`."""
    if not self.is_primary:
      return
    text = ", ".join(_format(k, v) for k, v in metrics.items())
    logging.info("[%s] step %d: %s", split, step, text)
    self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    self._jsonl.flush()
    with self._summaries[split].as_default(step=step):
      for name, value in metrics.items():
        if isinstance(value, (int, float)):
          tf.summary.scalar(name, value)
    self._summaries[split].flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    for writer in self._summaries.values():
      writer.close()


def _format(name: str, value: Any) -> str:
  if isinstance(value, float):
    if name == "eta_seconds":
      return f"eta={value / 60:.1f}min"
    return f"{name}={value:.4g}"
  return f"{name}={value}"
