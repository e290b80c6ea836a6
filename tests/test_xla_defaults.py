"""The XLA:CPU option the commands set (`resnet_ln.xla_defaults`)."""

import os

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from resnet_ln import xla_defaults

NHWC = ("NHWC", "HWIO", "NHWC")


def _default_in_effect() -> bool:
  return f"{xla_defaults.FLAG}={xla_defaults.VALUE}" in os.environ.get("XLA_FLAGS", "")


def _custom_fusions_with_convolutions(hlo_text: str) -> int:
  """How many library (kCustom) fusions of a compiled module compute a convolution."""
  blocks = [block.strip() for block in hlo_text.split("\n\n")]
  computations = {block.split(" ", 1)[0]: block for block in blocks if block.startswith("%")}
  calls = [line.split("calls=")[1].split(",")[0] for line in hlo_text.splitlines()
           if "kind=kCustom" in line and "calls=" in line]
  return sum("convolution(" in computations.get(called, "") for called in calls)


@pytest.mark.skipif(not _default_in_effect(), reason="the option is not set here (jaxlib "
                    "outside xla_defaults.JAXLIB_VERSIONS, or XLA_FLAGS names the flag)")
def test_cpu_weight_gradient_is_left_to_xla_not_ynnpack():
  # At this size XLA's default hands the 3x3 weight gradient to YNNPACK (a kCustom
  # fusion); the option conftest.py set, as the commands do, keeps it XLA's own.
  x, w = jnp.ones((64, 32, 32, 16)), jnp.ones((3, 3, 16, 16))
  loss = lambda x, w: jnp.sum(lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                       dimension_numbers=NHWC) ** 2)
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  assert "convolution(" in hlo
  assert _custom_fusions_with_convolutions(hlo) == 0


def test_cpu_default_is_added_once_and_never_over_the_users_own():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_defaults.set_cpu_defaults(environ, (0, 10))
  assert environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8 "
                                  "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
  assert not xla_defaults.set_cpu_defaults(environ, (0, 10))
  own = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"}
  assert not xla_defaults.set_cpu_defaults(own, (0, 10))
  assert own["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
  empty = {}
  assert xla_defaults.set_cpu_defaults(empty, (0, 9))
  assert empty["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
  for unknown_to_xla in [(0, 8), (0, 11), (1, 0)]:
    untouched = {}
    assert not xla_defaults.set_cpu_defaults(untouched, unknown_to_xla)
    assert untouched == {}
