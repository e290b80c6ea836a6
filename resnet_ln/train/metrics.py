"""Where metrics go: the console (absl logging), `workdir/metrics.jsonl` and
TensorBoard event files (only process 0 writes files); and the train metrics
accumulated between two log lines."""

import json
import os
import time
from typing import Any

import jax
from absl import logging

from resnet_ln.data.cpu_tensorflow import tf
from resnet_ln.train.tasks import Task


class TrainWindow:
  """The train steps since the last log line: metric sums, skipped updates, wall time."""

  def __init__(self) -> None:
    self.reset()

  def reset(self) -> None:
    self.sums: dict[str, float] = {}
    self.steps = 0  # Steps run, skipped ones included.
    self.skipped = 0  # Updates dropped for a non-finite gradient.
    self.start = time.time()

  def add(self, metrics: dict[str, Any]) -> None:
    """Adds one step's fetched metric sums (a skipped step: `skip` instead)."""
    for name, value in metrics.items():
      self.sums[name] = self.sums.get(name, 0.0) + float(value)
    self.steps += 1

  def skip(self) -> None:
    """Counts a step whose update was dropped; its inf/NaN metrics are left out."""
    self.skipped += 1
    self.steps += 1

  def steps_per_sec(self) -> float:
    return self.steps / max(time.time() - self.start, 1e-9)

  def summary(self, task: Task) -> dict[str, float]:
    """The window's mean metrics over its steps that were not skipped."""
    return task.summarize(self.sums)


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
