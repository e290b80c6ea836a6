"""Orbax checkpoints of the train state in `workdir/checkpoints`.

Each checkpoint holds the state (NumPy arrays: one replica, identical on every
process) and a small JSON record of the config fields that fix the state's
shapes and the data order, so that resuming with a different model or batch
size fails with a message instead of a traceback from deep inside Orbax.
Orbax writes into a temporary directory and renames it when complete, so a
checkpoint is never half-written; an interrupted save leaves only a temporary
directory that is ignored.
"""

import os
import shutil
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

# Fields that must match between the checkpoint and the config to resume.
IDENTITY_FIELDS = ("model", "model_kwargs", "dataset", "image_size", "seq_len", "batch_size",
                   "optimizer", "seed")


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used; the message says why and what to do."""


def identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config fields recorded with every checkpoint."""
  fields = {}
  for name in IDENTITY_FIELDS:
    value = config.get(name)
    fields[name] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  return fields


class Checkpointer:
  """Saves every `checkpoint_every_steps`, keeps `max_to_keep`, restores the newest good one."""

  def __init__(self, workdir: str, max_to_keep: int, asynchronous: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    # Where unreadable checkpoints go once a good older one is found, so that new
    # saves can reuse their step numbers; they are moved, never deleted.
    self.unreadable_directory = os.path.join(os.path.abspath(workdir), "unreadable_checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=asynchronous, create=True,
        ),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, host_state: Any, config: ml_collections.ConfigDict) -> None:
    """Starts saving `host_state` (NumPy arrays) as step `step`; returns before it is written."""
    self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(host_state), identity=ocp.args.JsonSave(identity(config))
        ),
        force=True,
    )

  def restore(self, target: Any, config: ml_collections.ConfigDict) -> tuple[Any, int] | None:
    """The newest readable checkpoint's state, shaped like `target`, and its step.

    Returns None when there is no checkpoint. A checkpoint that cannot be read is
    reported and skipped (the next older one is tried); nothing is deleted.

    Raises:
      CheckpointError: the checkpoints were written with a different config, or
        none of them can be read.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      return None
    bad = []
    for step in steps:
      try:
        saved_identity = self.manager.restore(
            step, args=ocp.args.Composite(identity=ocp.args.JsonRestore())
        ).identity
      except Exception as e:  # A truncated or corrupted checkpoint: any reader error.
        logging.error("Checkpoint %s is unreadable (%s: %s); trying an older one.",
                      self._path(step), type(e).__name__, e)
        bad.append(step)
        continue
      self._check_identity(saved_identity, config, step)
      try:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        ).state
      except Exception as e:
        logging.error("Checkpoint %s is unreadable (%s: %s); trying an older one.",
                      self._path(step), type(e).__name__, e)
        bad.append(step)
        continue
      if bad:
        self._set_aside(bad)
        logging.warning("Resuming from step %d; the unreadable newer checkpoints were moved, "
                        "untouched, to %s.", step, self.unreadable_directory)
      return restored, step
    raise CheckpointError(
        f"None of the checkpoints in {self.directory} can be read (steps {steps}). "
        "Move that directory away to start afresh, or point --workdir at a new directory."
    )

  def _check_identity(self, saved: dict[str, Any], config: ml_collections.ConfigDict, step: int):
    current = identity(config)
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, config {current[k]!r}"
             for k in IDENTITY_FIELDS if saved.get(k) != current[k]]
    if diffs:
      raise CheckpointError(
          f"The checkpoint {self._path(step)} was written by a different configuration "
          f"({'; '.join(diffs)}). Use the original config to resume, or a new --workdir "
          "to start a new run."
      )

  def _set_aside(self, steps: list[int]) -> None:
    """Moves the checkpoints of `steps` into `unreadable_directory` (process 0 moves)."""
    if jax.process_index() == 0:
      os.makedirs(self.unreadable_directory, exist_ok=True)
      for step in steps:
        target = os.path.join(self.unreadable_directory, str(step))
        suffix = 1
        while os.path.exists(target):  # Same step unreadable again in a later run.
          target = os.path.join(self.unreadable_directory, f"{step}.{suffix}")
          suffix += 1
        shutil.move(self._path(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("resnet_ln: unreadable checkpoints moved")
    self.manager.reload()

  def _path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def wait(self) -> None:
    """Blocks until the pending asynchronous save is written."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def load_variables(workdir: str, step: int | None = None) -> dict[str, Any]:
  """The model variables (`params`, `batch_stats`) of a run's checkpoint, for inference.

  Args:
    workdir: the run's --workdir.
    step: which checkpoint; the newest when None.

  Returns:
    `{'params': ..., 'batch_stats': ...}` (NumPy arrays), ready for `model.apply`.
  """
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {directory}: train first, or check --workdir.")
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  manager.close()
  variables = {"params": state["params"]}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  return variables
