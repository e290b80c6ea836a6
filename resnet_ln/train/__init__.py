"""The trainer: state, steps, parallelism, optimiser, checkpoints, metrics.

Two layers. The jax-only core (`build`, `state`, `steps`, `tasks`, `optimizer`,
`parallel`, `synthetic`) needs jax, flax, optax and ml_collections, and is what
`bench/` runs on an accelerator image without TensorFlow. The rest (`trainer`,
`checkpoint`, `metrics`, `validation`) adds the input pipeline (TensorFlow),
Orbax and TensorBoard. The names below are imported on first use (PEP 562), so
that `from resnet_ln.train import build` loads the core alone.
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
    "initial_state": "build",
    "training_length": "build",
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
