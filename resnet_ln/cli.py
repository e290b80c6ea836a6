"""What the `python -m resnet_ln.NAME` commands share: flag parsing and one-line errors.

    if __name__ == "__main__":
      cli.run(main)

A bad flag, a bad workdir or input the command cannot use ends the command with
one `error: ...` line on stderr and exit status 1, never a traceback. Importing
this module sets the commands' environment defaults: TensorFlow's C++ logs at
warnings and above, and the package's XLA:CPU option (`resnet_ln.xla_defaults`).
"""

import os
import sys
from typing import Callable

from absl import app, flags, logging

from resnet_ln import xla_defaults

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Before JAX starts its backends, which read XLA_FLAGS once.
xla_defaults.set_cpu_defaults()

FLAGS = flags.FLAGS
# Errors that are the user's input, not a bug: reported in one line.
USER_ERRORS = (ValueError, OSError)


class UsageError(ValueError):
  """Input the command cannot use; the message says what to pass instead."""


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad or missing flag or config override reported in one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:  # A bad flag value, including an ill-typed --config.FIELD.
    sys.exit(f"error: {e}\nSee --help for the flags.")
  except AttributeError as e:  # --config.FIELD for a field that the config does not have.
    reason = e.args[0].args[0] if e.args and isinstance(e.args[0], KeyError) else e
    reason = str(reason).replace("\n", ". ")
    override = _override_naming(argv, reason)
    sys.exit(f"error: unknown config field in {override or 'a --config.FIELD override'}: "
             f"{reason}")


def _override_naming(argv: list[str], reason: str) -> str | None:
  """The first `--config.A.B=V` argument with the field that `reason` (KeyError text) names."""
  field = reason.split(".")[0].strip("'\"")
  for arg in argv:
    if arg.startswith("--config.") and field in arg.partition("=")[0].split(".")[1:]:
      return arg
  return None


def run(main: Callable[[list[str]], None],
        flags_parser: Callable[[list[str]], list[str]] = parse_flags) -> None:
  """`absl.app.run(main)`, with the errors of `main` on bad input as one `error:` line."""

  def checked_main(argv: list[str]) -> None:
    from resnet_ln.train.checkpoint import CheckpointError  # pylint: disable=import-outside-toplevel
    if not FLAGS["verbosity"].present:  # The libraries' INFO lines, unless asked for.
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except (*USER_ERRORS, CheckpointError) as e:
      sys.exit(f"error: {e}".replace("\n", " "))

  app.run(checked_main, flags_parser=flags_parser)
