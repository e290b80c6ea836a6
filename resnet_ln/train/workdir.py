"""What a run keeps in its workdir besides checkpoints and metrics: its lock and its configs.

- `WORKDIR/lock` keeps one run per workdir. The run's process 0 creates it
  atomically (O_CREAT | O_EXCL) with the holder's host, PID, process start time
  and start date, touches it every `HEARTBEAT_S` seconds (its modification time
  is the heartbeat) and deletes it on exit. A lock whose holder is gone is taken
  over: on the same host as soon as the PID is not running (or now belongs to
  another process: the start time differs); from another host, whose processes
  cannot be seen, once its heartbeat is `STALE_AFTER_S` old.
- `WORKDIR/config.json` is the config the run began with; a rerun that changes
  fields writes its config to `WORKDIR/config_history/config_step<STEP>.json`,
  STEP being the step it resumed from, and logs the changed fields.
"""

import datetime
import json
import os
import socket
import sys
import threading
import time
import re
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from resnet_ln.train import signals

if TYPE_CHECKING:  # `config_file` is read by `resnet_ln.load_run`, which needs no ml_collections.
  import ml_collections

LOCK_NAME = "lock"
HEARTBEAT_S = 30.0  # How often the holder touches its lock file.
STALE_AFTER_S = 600.0  # A lock from another host with an older heartbeat is taken over.
# A workdir's records of the run: its first config, and what tools need of its dataset.
CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
HISTORY_DIR = "config_history"


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir; the message names it and says what to do."""


# ----------------------------------------------------------------------------
# The lock.
# ----------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
  """When process `pid` started (ticks after boot: /proc/PID/stat field 22); None if unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  return stat.rsplit(")", 1)[1].split()[19]  # After "(comm)", whose name may hold spaces.


def _boot_id() -> str | None:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


def _holder_gone(holder: dict[str, Any] | None, age_s: float) -> str | None:
  """Why the holder of a lock (its record, heartbeat `age_s` seconds old) is gone; None if alive."""
  if holder is None or holder.get("host") != socket.gethostname():
    if age_s > STALE_AFTER_S:
      return f"its heartbeat is {age_s:.0f} s old (more than {STALE_AFTER_S:.0f} s)"
    return None
  if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
    return "this host has rebooted since it was taken"
  pid = holder["pid"]
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return f"process {pid} is no longer running"
  except PermissionError:
    pass  # Alive, under another user.
  if holder.get("pid_start") and _process_start(pid) not in (None, holder["pid_start"]):
    return f"PID {pid} now belongs to another process"
  return None


def _describe(holder: dict[str, Any] | None) -> str:
  if holder is None:
    return "a run whose lock file is empty or unreadable (it may be being written)"
  return (f"PID {holder['pid']} on host {holder['host']}, running since "
          f"{holder.get('since', '?')} ({holder.get('command', '?')})")


class WorkdirLock:
  """One run per workdir: `with WorkdirLock(workdir):` holds `workdir/lock` (process 0 holds it).

  Raises WorkdirLockedError on entry, in every process, when a live run holds it.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._record = None  # The bytes this process wrote into the lock file, while it holds it.
    self._stop = threading.Event()
    self._heartbeat = threading.Thread(target=self._beat, daemon=True)

  def __enter__(self) -> "WorkdirLock":
    error = None
    try:
      if jax.process_index() == 0:
        try:
          self._acquire()
        except WorkdirLockedError as e:
          error = e
      if jax.process_count() > 1:  # A collective: every process stops when process 0 must.
        locked = multihost_utils.process_allgather(np.int32(error is None))
        if not locked.all() and error is None:
          error = WorkdirLockedError(f"Process 0 could not lock --workdir={self.workdir}: see "
                                     "its log.")
    except BaseException:  # E.g. a SIGTERM during start-up: `__exit__` will not run.
      self.release()
      raise
    if error:
      raise error
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.release()

  def _acquire(self) -> None:
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    record = json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
        "boot_id": _boot_id(), "since": since, "command": " ".join(sys.argv),
    }).encode()
    for _ in range(3):  # Each round either takes the lock, or removes one stale lock.
      with signals.deferred():  # Once the file exists, `_record` says it is ours.
        try:
          fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
          fd = None
        if fd is not None:
          try:
            os.write(fd, record)
            os.fsync(fd)
          finally:
            os.close(fd)
          self._record = record
          self._heartbeat.start()
          return
      self._remove_if_stale()
    raise WorkdirLockedError(f"Could not take {self.path}: other runs keep taking it over.")

  def _remove_if_stale(self) -> None:
    """Deletes the lock file if its holder is gone; raises WorkdirLockedError if it is alive."""
    try:
      with open(self.path, "rb") as f:
        content = f.read()
      age_s = time.time() - os.stat(self.path).st_mtime
    except FileNotFoundError:
      return  # Released meanwhile.
    try:
      holder = json.loads(content)
    except ValueError:
      holder = None
    if not (isinstance(holder, dict) and {"host", "pid"} <= holder.keys()):
      holder = None
    reason = _holder_gone(holder, age_s)
    if reason is None:
      raise WorkdirLockedError(
          f"--workdir={self.workdir} is in use by {_describe(holder)}. Wait for that run to "
          "finish, stop it, or pass another --workdir. If it is gone (its machine was lost), "
          f"delete {self.path}; a lock from another host is also taken over once its heartbeat "
          f"(the file's modification time, now {age_s:.0f} s old) is {STALE_AFTER_S:.0f} s old, "
          "one from this host as soon as its process has exited."
      )
    # Renamed first, so that of two runs taking over the same stale lock only one removes it.
    claimed = f"{self.path}.stale.{socket.gethostname()}.{os.getpid()}"
    try:
      os.rename(self.path, claimed)
    except FileNotFoundError:
      return
    with open(claimed, "rb") as f:
      if f.read() != content:  # Another run took it over first: that lock is live.
        os.rename(claimed, self.path)
        raise WorkdirLockedError(f"--workdir={self.workdir} was just taken by another run.")
    os.remove(claimed)
    logging.warning("Took over the lock %s of %s: %s.", self.path, _describe(holder), reason)

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        os.utime(self.path)
      except OSError as e:
        logging.warning("Cannot refresh the heartbeat of %s: %s.", self.path, e)

  def release(self) -> None:
    """Deletes the lock file if this process holds it."""
    with signals.deferred():
      if self._record is None:
        return
      self._stop.set()
      try:
        with open(self.path, "rb") as f:
          mine = f.read() == self._record
        if mine:
          os.remove(self.path)
        else:
          logging.warning("%s was taken over by another run; leaving it to that run.", self.path)
      except FileNotFoundError:
        pass
      self._record = None


# ----------------------------------------------------------------------------
# The config record.
# ----------------------------------------------------------------------------
def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
  return flat


def _write_json(path: str, text: str) -> None:
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)  # Never a half-written config.


def config_file(workdir: str, step: int | None = None) -> str:
  """The config in effect at `step` (the latest when None): the run's first `config.json`,
  or the `config_history/config_step<N>.json` with the largest N <= step."""
  history = os.path.join(workdir, HISTORY_DIR)
  changes = {}
  if os.path.isdir(history):
    for name in os.listdir(history):
      match = re.fullmatch(r"config_step(\d+)\.json", name)
      if match and (step is None or int(match[1]) <= step):
        changes[int(match[1])] = os.path.join(history, name)
  return changes[max(changes)] if changes else os.path.join(workdir, CONFIG_FILE)


def record_config(workdir: str, config: "ml_collections.ConfigDict", step: int) -> None:
  """Records `config`, in effect from `step` on, without overwriting the run's first config."""
  text = config.to_json_best_effort(indent=2)
  original = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(original):
    _write_json(original, text)
    return
  with open(config_file(workdir)) as f:  # The config of the latest (re)run.
    previous = _flatten(json.load(f))
  current = _flatten(json.loads(text))
  changed = [f"{name}: {previous.get(name)!r} -> {current.get(name)!r}"
             for name in sorted(previous.keys() | current.keys())
             if previous.get(name) != current.get(name)]
  if not changed:
    return
  history = os.path.join(workdir, HISTORY_DIR)
  os.makedirs(history, exist_ok=True)
  path = os.path.join(history, f"config_step{step}.json")
  _write_json(path, text)
  logging.warning("The config changed from step %d on (%s); it is recorded in %s, and the "
                  "run's first config stays in %s.", step, "; ".join(changed), path, original)
