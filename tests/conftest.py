"""Test set-up: 8 host CPU devices for the multi-device paths, TensorFlow kept quiet.

XLA reads XLA_FLAGS once, when JAX initialises its backends, so this must run
before any test module imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from resnet_ln import xla_defaults  # pylint: disable=wrong-import-position

xla_defaults.set_cpu_defaults()  # What train.py and the commands run with.

import jax  # pylint: disable=wrong-import-position  (after XLA_FLAGS)
import pytest  # pylint: disable=wrong-import-position


@pytest.fixture
def processes(monkeypatch):
  """Simulates being process `.index` of `.count` (set them; default 0 of 1)."""
  process = type("Processes", (), {"index": 0, "count": 1})()
  monkeypatch.setattr(jax, "process_count", lambda: process.count)
  monkeypatch.setattr(jax, "process_index", lambda: process.index)
  return process
