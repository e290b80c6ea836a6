"""resnet_ln: ResNets and LayerNorm LSTMs in JAX/Flax, with a multi-device trainer."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_run"]


def __getattr__(name: str) -> Any:
  # Loaded on first use, so that `import resnet_ln.models` stays free of Orbax.
  if name == "load_run":
    from resnet_ln.run import load_run  # pylint: disable=import-outside-toplevel
    return load_run
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
