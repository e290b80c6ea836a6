"""The one XLA:CPU option the package's commands set: convolutions outside YNNPACK.

On CPU, jaxlib 0.9 and 0.10 hand convolutions (forward and both gradients) to
YNNPACK, whose weight gradient runs over operands XLA first copies to a
batch-last layout (see "Where the CPU train step goes" in `bench/RESULTS.md`).
With `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` XLA keeps
its own convolutions and still gives YNNPACK the matmuls (every 1x1 convolution
on CPU, see `resnet_ln.models.convolution`) and reductions. Measured beside
PyTorch on a 2-core CPU, it takes the ResNet train steps from 1.7 to 2.0 times
PyTorch's time down to 1.3 to 1.7 times (`bench/RESULTS.md`, run D).

XLA reads `XLA_FLAGS` once, when JAX initialises its backends, so
`set_cpu_defaults` must run before that. The package's commands call it
(`train.py` and every `python -m resnet_ln.*` through `resnet_ln.cli`, the
benchmarks through `bench`); importing `resnet_ln` or its models does not, so
your own process keeps XLA's defaults unless you call it first:

    from resnet_ln import xla_defaults
    xla_defaults.set_cpu_defaults()  # Before the first JAX computation.

It adds the option only for the jaxlib versions known to accept it
(`JAXLIB_VERSIONS`: XLA aborts on a flag it does not know; measured on 0.10.2),
and never when `XLA_FLAGS` names the flag already: to keep XLA's own choice, set
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`.
Accelerator backends ignore it.
"""

from importlib import metadata
import os
from typing import MutableMapping

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "-individual_convolution"
# [first, end): the jaxlib versions whose XLA knows the flag and its +/- syntax
# (found in the 0.9.0 and 0.10.0 binaries, used with 0.10.2); later ones are left
# alone until checked.
JAXLIB_VERSIONS = ((0, 9), (0, 11))


def _jaxlib_version() -> tuple[int, ...] | None:
  """The installed jaxlib's (major, minor), or None when it cannot be read."""
  try:
    major, minor = metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)
  except (metadata.PackageNotFoundError, ValueError):
    return None


def set_cpu_defaults(environ: MutableMapping[str, str] = os.environ,
                     jaxlib_version: tuple[int, ...] | None = None) -> bool:
  """Appends `FLAG=VALUE` to `environ["XLA_FLAGS"]` unless it is there already.

  Args:
    environ: the environment to change (the process's by default).
    jaxlib_version: (major, minor); by default the installed jaxlib's.

  Returns:
    Whether the option was added: False when `XLA_FLAGS` already names `FLAG` or
    the jaxlib version is outside `JAXLIB_VERSIONS` (or unknown).
  """
  version = _jaxlib_version() if jaxlib_version is None else tuple(jaxlib_version)
  first, end = JAXLIB_VERSIONS
  flags = environ.get("XLA_FLAGS", "")
  if version is None or not first <= version < end or FLAG in flags:
    return False
  environ["XLA_FLAGS"] = f"{flags} {FLAG}={VALUE}".strip()
  return True
