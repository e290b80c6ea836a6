"""Orbax checkpoints of the train state in `workdir/checkpoints`.

Each checkpoint holds the state (NumPy arrays: one replica, identical on every
process), a small JSON record of the config fields that fix the state's shapes
and the data order, so that resuming with a different model or batch size fails
with a message instead of a traceback from deep inside Orbax, and the SHA-256 of
each array, checked on every restore, so that a checkpoint whose bytes changed
after the save (a bad disk, a partial copy) is never used.
Orbax writes into a temporary directory (`STEP.orbax-checkpoint-tmp`) and
renames it when complete, so a checkpoint is never half-written: a save that
is killed leaves only a temporary directory, which restoring ignores and the
next save of that step replaces; a save that fails (a full disk) is reported
and its temporary directory removed.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from typing import TYPE_CHECKING, Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from resnet_ln.models.sequence import rename_legacy

if TYPE_CHECKING:  # `load_variables` needs no ml_collections.
  import ml_collections

# Fields that must match between the checkpoint and the config to resume.
IDENTITY_FIELDS = ("model", "model_kwargs", "dataset", "image_size", "seq_len", "batch_size",
                   "optimizer", "seed", "init_from", "init_exclude", "freeze")
# Errors of a write that found no room: a full disk, a quota, a file-size limit.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# The checkpoint item that holds the state's `array_digests` (absent before they were recorded).
DIGEST_ITEM = "digest"


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used; the message says why and what to do."""


def identity(config: "ml_collections.ConfigDict") -> dict[str, Any]:
  """The config fields recorded with every checkpoint."""
  fields = {}
  for name in IDENTITY_FIELDS:
    value = config[name]
    fields[name] = value.to_dict() if hasattr(value, "to_dict") else value
  return fields


def is_out_of_space(error: BaseException) -> bool:
  """Whether `error` (or its cause) is a write that found no room.

  Orbax's array writes fail inside TensorStore, which reports the errno only
  in its message ("... [os_error_code='28']").
  """
  while error is not None:
    if isinstance(error, OSError) and error.errno in OUT_OF_SPACE:
      return True
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code and int(code.group(1)) in OUT_OF_SPACE:
      return True
    error = error.__cause__ or error.__context__
  return False


def array_digests(tree: Any) -> dict[str, str]:
  """The SHA-256 of each array in `tree` (dtype, shape and bytes), by path ("params/head/kernel").

  Paths name dataclass fields, dict keys and sequence indices alike, so a state
  restored as nested dicts (without a target) has the digests of the TrainState
  it was saved from. About 0.1 s per 200 MB (ResNet-50's parameters and momentum)
  on a CPU core with SHA extensions.
  """
  digests = {}
  for path, leaf in _leaves_by_path(tree).items():
    leaf = np.asarray(leaf)
    digest = hashlib.sha256(f"{leaf.dtype}{leaf.shape}".encode())
    digest.update(np.ascontiguousarray(leaf).reshape(-1).view(np.uint8))
    digests[path] = digest.hexdigest()
  return digests


def _leaves_by_path(tree: Any) -> dict[str, Any]:
  """`tree`'s leaves by path ("params/head/kernel"), the same for a dataclass and its dicts."""
  return {"/".join(str(_key_name(key)) for key in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _key_name(key: Any) -> Any:
  for attribute in ("name", "key", "idx"):  # GetAttrKey, DictKey, SequenceKey.
    if hasattr(key, attribute):
      return getattr(key, attribute)
  return key


def fingerprint(digests: dict[str, str]) -> str:
  """A short hash of a tree's `array_digests`: equal iff the trees are bitwise equal."""
  return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


def verify(recorded: dict[str, str], tree: Any, path: str) -> None:
  """Raises CheckpointError unless `tree`'s arrays have the digests recorded at the save."""
  found = array_digests(tree)
  changed = sorted(name for name in recorded.keys() | found.keys()
                   if recorded.get(name) != found.get(name))
  if changed:
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    raise CheckpointError(
        f"Checkpoint {path} is damaged: {len(changed)} of its arrays ({shown}) differ from the "
        "SHA-256 digests recorded when it was saved, so its files changed afterwards (a bad "
        "disk, an incomplete copy or sync)."
    )


class Checkpointer:
  """Saves the state when asked, keeps `max_to_keep`, restores the newest readable one."""

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
    self._saving = None  # The step of the save in flight, if any.

  def save(self, step: int, host_state: Any, config: "ml_collections.ConfigDict") -> None:
    """Starts saving `host_state` (NumPy arrays) as step `step`; returns before it is written.

    Raises:
      CheckpointError: the previous save failed (e.g. the disk is full), or the
        processes of a multi-process run hold different states.
    """
    digests = array_digests(host_state)
    state_fingerprint = fingerprint(digests)
    logging.info("Saving checkpoint %s (state fingerprint %s).", self._path(step),
                 state_fingerprint)
    _check_processes_agree(state_fingerprint, step)
    # Orbax first waits for the previous save, and raises its error if it failed.
    with self._reporting_failed_saves(step if self._saving is None else self._saving):
      self.manager.save(
          step,
          args=ocp.args.Composite(**{
              "state": ocp.args.StandardSave(host_state),
              "identity": ocp.args.JsonSave(identity(config)),
              DIGEST_ITEM: ocp.args.JsonSave({"sha256": digests}),
          }),
          force=True,
      )
    self._saving = step

  def restore(self, target: Any, config: "ml_collections.ConfigDict") -> tuple[Any, int] | None:
    """The newest readable checkpoint's state, shaped like `target`, and its step.

    Returns None when there is no checkpoint. A checkpoint that cannot be read,
    or whose arrays differ from the digests recorded at its save, is reported and
    skipped (the next older one is tried); nothing is deleted.

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
        restored = _restore_state(self.manager, self._path(step), step, target)
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

  def _check_identity(self, saved: dict[str, Any], config: "ml_collections.ConfigDict",
                      step: int) -> None:
    # Through JSON, as saved: tuples in the config (stage sizes, boundaries) become lists.
    current = json.loads(json.dumps(identity(config)))
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

  def latest_step(self) -> int | None:
    """The step of the newest checkpoint (saved, or being saved), or None."""
    return self.manager.latest_step()

  def _path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def wait(self) -> None:
    """Blocks until the pending asynchronous save is written.

    Raises:
      CheckpointError: the save failed (e.g. the disk is full).
    """
    with self._reporting_failed_saves(self._saving):
      self.manager.wait_until_finished()
    self._saving = None

  def close(self) -> None:
    """Waits for the pending save (see `wait`), then releases Orbax's threads."""
    try:
      self.wait()
    finally:
      self.manager.close()

  @contextlib.contextmanager
  def _reporting_failed_saves(self, step: int | None) -> Iterator[None]:
    """Turns the error of step `step`'s save into a CheckpointError that says what to do."""
    try:
      yield
    except Exception as e:  # Any error of Orbax's writers.
      self._saving = None
      complete = [int(name) for name in os.listdir(self.directory) if name.isdigit()]
      kept = (f"The newest complete checkpoint, {self._path(max(complete))}, is intact"
              if complete else "No checkpoint is complete yet")
      if not is_out_of_space(e):
        raise CheckpointError(f"Writing checkpoint {self._path(step)} failed: {e}. {kept}.") from e
      self._remove_partial_saves()
      raise CheckpointError(
          f"No space left to write checkpoint {self._path(step)}: the disk is full (or a quota "
          f"or file-size limit was reached). {kept}; the partial one was removed. Free some "
          "space (or lower config.max_to_keep), then rerun the same command to resume."
      ) from e

  def _remove_partial_saves(self) -> None:
    """Deletes the temporary directories of failed saves (process 0 deletes)."""
    if jax.process_index() == 0:
      for name in os.listdir(self.directory):
        if ".orbax-checkpoint-tmp" in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)


def _check_processes_agree(state_fingerprint: str, step: int) -> None:
  """Raises unless every process holds the state of process 0, which alone writes it.

  Orbax writes NumPy arrays from process 0 only, so a process that has silently
  diverged (other code, config or data on that host) would go unnoticed.
  """
  if jax.process_count() == 1:
    return
  mine = np.frombuffer(bytes.fromhex(state_fingerprint), np.uint8)
  everyone = multihost_utils.process_allgather(mine)
  differ = [p for p, theirs in enumerate(everyone) if not np.array_equal(theirs, everyone[0])]
  if differ:
    raise CheckpointError(
        f"At step {step} the train state of process(es) {differ} differs from process 0's. "
        "Every process must run the same code, config and data: compare the hosts' checkouts "
        "and config flags."
    )


def _restore_state(manager: ocp.CheckpointManager, path: str, step: int,
                   target: Any = None) -> Any:
  """The state of checkpoint `path` (step `step`), shaped like `target` if given, verified.

  With a `target`, a sequence model's checkpoint that still uses the submodules'
  former names (`resnet_ln.models.sequence.LEGACY_NAMES`) is read under the new ones.

  Raises:
    CheckpointError: its arrays differ from the digests recorded at its save, or
      (renamed) it does not hold `target`'s arrays.
  """
  if target is None:
    return _restore_verified(manager, path, step, None)
  try:
    return _restore_verified(manager, path, step, target)
  except CheckpointError:
    raise
  except Exception:
    state = _restore_verified(manager, path, step, None)
    renamed = rename_legacy(state, target.params)
    if renamed is state:  # Not the former names: the target's error stands.
      raise
    return _shaped_like(target, renamed, path)


def _restore_verified(manager: ocp.CheckpointManager, path: str, step: int, target: Any) -> Any:
  """The saved state, shaped like `target` (nested dicts when None), checked against its digests."""
  items = {"state": ocp.args.StandardRestore(target)}
  has_digests = os.path.isdir(os.path.join(path, DIGEST_ITEM))
  if has_digests:
    items[DIGEST_ITEM] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if has_digests:
    verify(restored[DIGEST_ITEM]["sha256"], restored.state, path)
  else:
    logging.warning("Checkpoint %s records no digests (it predates them), so its integrity "
                    "cannot be checked; restoring it as it is.", path)
  return restored.state


def _shaped_like(target: Any, state: dict[str, Any], path: str) -> Any:
  """`target`'s tree with the arrays of nested-dict `state`, which must match it path by path."""
  found, wanted = _leaves_by_path(state), _leaves_by_path(target)
  differ = sorted(name for name in found.keys() | wanted.keys()
                  if name not in found or name not in wanted
                  or np.shape(found[name]) != np.shape(wanted[name])
                  or np.asarray(found[name]).dtype != np.asarray(wanted[name]).dtype)
  if differ:
    raise CheckpointError(f"Checkpoint {path} does not hold the state this config builds "
                          f"({len(differ)} arrays missing, extra or of another shape or dtype, "
                          f"e.g. {', '.join(differ[:3])}).")
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target),
                                      [np.asarray(found[name]) for name in wanted])


def load_variables(workdir: str, step: int | None = None) -> dict[str, Any]:
  """The model variables (`params`, `batch_stats`) of a run's checkpoint, for inference.

  Args:
    workdir: the run's --workdir.
    step: which checkpoint; the newest when None.

  Returns:
    `{'params': ..., 'batch_stats': ...}` (NumPy arrays), ready for `model.apply`.

  Raises:
    CheckpointError: the checkpoint's arrays differ from the digests recorded at its save.
  """
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {directory}: train first, or check --workdir.")
    state = _restore_state(manager, os.path.join(directory, str(step)), step)
  finally:
    manager.close()
  variables = {"params": state["params"]}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  return variables
