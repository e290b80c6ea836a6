"""The trainer: state, steps, parallelism, optimiser, checkpoints, metrics.

The names below are imported on first use (PEP 562), so that importing one
submodule (`from resnet_ln.train import steps`, as the benchmark does on machines
without TensorFlow) does not import the input pipeline; `trainer` and
`checkpoint` bring in TensorFlow and orbax when they are first touched.
"""

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "load_variables": "checkpoint",
    "TrainState": "state",
    "eval_step": "steps",
    "train_step": "steps",
    "NonFiniteError": "trainer",
    "create_model": "trainer",
    "train_and_evaluate": "trainer",
    "ConfigError": "validation",
    "validate_config": "validation",
    "WorkdirLockedError": "workdir",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_EXPORTS))
