"""Where metrics go: the console (absl logging), `workdir/metrics.jsonl` and
TensorBoard event files (only process 0 writes files); and the train metrics
accumulated between two log lines."""

import collections
import contextlib
import json
import os
import time
from typing import Any, Iterator

import jax
from absl import logging

from resnet_ln.data.cpu_tensorflow import tf
from resnet_ln.train.tasks import Task


class Stopwatch:
  """Where the wall time of a run goes: set-up, compiling, waiting for input, stepping,
  checkpointing, evaluating. Stepping is what is left: the loop's own time."""

  ACTIVITIES = ("setup", "compiling", "waiting_for_input", "checkpointing", "evaluating")

  def __init__(self) -> None:
    self.start = time.perf_counter()
    self.seconds: dict[str, float] = collections.defaultdict(float)

  @contextlib.contextmanager
  def __call__(self, activity: str) -> Iterator[None]:
    """Adds the time spent inside the `with` block to `activity`."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[activity] += time.perf_counter() - start

  def summary(self) -> dict[str, float]:
    """Seconds per activity, the total, and goodput: the fraction of the total spent stepping."""
    total = time.perf_counter() - self.start
    seconds = {f"seconds_{name}": self.seconds[name] for name in self.ACTIVITIES}
    stepping = max(total - sum(seconds.values()), 0.0)
    return {**seconds, "seconds_stepping": stepping, "seconds_total": total,
            "goodput": stepping / max(total, 1e-9)}


class TrainWindow:
  """The train steps since the last log line: metric sums, skipped updates, wall time."""

  def __init__(self) -> None:
    self.reset()

  def reset(self) -> None:
    self.sums: dict[str, float] = {}
    self.steps = 0  # Steps run, skipped ones included.
    self.skipped = 0  # Updates dropped for a non-finite gradient.
    self.input_seconds = 0.0  # Waiting for the next batch.
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

  def input_fraction(self) -> float:
    """The share of the window's wall time spent waiting for input."""
    return self.input_seconds / max(time.time() - self.start, 1e-9)

  def summary(self, task: Task) -> dict[str, float]:
    """The window's mean metrics over its steps that were not skipped."""
    return task.summarize(self.sums)


class MetricWriter:
  """Writes one record per logged train step and per evaluation."""

  def __init__(self, workdir: str):
    self.is_primary = jax.process_index() == 0
    self._jsonl = None
    self._summaries = {}
    self._workdir = workdir
    if self.is_primary:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    """Logs `metrics` (floats) for `split` ('train', 'eval' or 'time') at `step`."""
    if not self.is_primary:
      return
    text = ", ".join(_format(k, v) for k, v in metrics.items())
    logging.info("[%s] step %d: %s", split, step, text)
    self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    self._jsonl.flush()
    if split not in self._summaries:
      self._summaries[split] = tf.summary.create_file_writer(
          os.path.join(self._workdir, "tensorboard", split))
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
    if name.startswith("seconds_"):
      return f"{name[len('seconds_'):]}={value:.1f}s"
    return f"{name}={value:.4g}"
  return f"{name}={value}"
