"""SIGTERM (a preemption) and SIGINT (Ctrl-C) as requests to stop, whenever they come.

- Before the training loop, while restoring or compiling, there is nothing to
  save: the signal raises `Interrupted`, which unwinds start-up (closing files,
  releasing the workdir lock); train.py then exits with status 0.
- In the loop it is only recorded: the loop saves a checkpoint at the current
  step and returns.
- A SIGINT after either (a second Ctrl-C) raises KeyboardInterrupt at once: the
  run stops without saving, and its newest complete checkpoint stays intact.
"""

import contextlib
import signal
import types
from typing import Any, Iterator

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The `deferred()` sections under way, and the Interrupted that waits for their end.
_deferral = {"depth": 0, "pending": None}


class Interrupted(BaseException):
  """A stop signal before training began.

  A BaseException, as KeyboardInterrupt is, so that no `except Exception` on
  its way (such as the one that sets unreadable checkpoints aside) takes it for
  an error of the code it interrupts.
  """


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """A section that Interrupted does not cut short (taking a lock): it is raised at its end."""
  _deferral["depth"] += 1
  try:
    yield
  finally:
    _deferral["depth"] -= 1
  if _deferral["depth"] == 0 and _deferral["pending"]:
    pending, _deferral["pending"] = _deferral["pending"], None
    raise pending


class StopSignals:
  """`with StopSignals() as stop:` handles SIGTERM and SIGINT until the block ends.

  Attributes:
    received: the name of the first signal ("SIGTERM", "SIGINT"), or None.
  """

  def __init__(self) -> None:
    self.received = None
    self._training = False
    self._previous = {}

  def __enter__(self) -> "StopSignals":
    for signum in SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info: Any) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def start_training(self) -> None:
    """From now on a first signal is only recorded, for the loop to save and stop."""
    self._training = True

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    name = signal.Signals(signum).name
    if self.received:
      if signum == signal.SIGINT:
        logging.warning("SIGINT again: stopping at once, without saving.")
        raise KeyboardInterrupt
      return
    self.received = name
    if not self._training:
      interrupted = Interrupted(f"{name} received during start-up: stopped before training began.")
      if _deferral["depth"]:
        _deferral["pending"] = interrupted
        return
      raise interrupted
    logging.warning("%s received: saving a checkpoint and exiting (Ctrl-C again exits at once, "
                    "without saving).", name)
