"""The one XLA:CPU option the package sets: convolutions outside YNNPACK.

On CPU, jaxlib 0.9 and 0.10 hand convolutions (forward and both gradients) to
YNNPACK, whose weight gradient runs over operands XLA first copies to a
batch-last layout (see "Where the CPU train step goes" in `bench/RESULTS.md`).
With `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` XLA keeps
its own convolutions and still gives YNNPACK the matmuls (every 1x1 convolution
on CPU, see `resnet_ln.models.convolution`) and reductions. Measured beside
PyTorch on a 2-core CPU, it takes the ResNet train steps from 1.7 to 2.0 times
PyTorch's time down to 1.3 to 1.7 times (`bench/RESULTS.md`, run D).

XLA reads `XLA_FLAGS` once, when JAX starts its backends, so `import resnet_ln`
adds the option there (`set_cpu_defaults`); importing the package after JAX has
run a computation leaves the running process as it is. The option is added only
for the jaxlib versions it was measured on (`JAXLIB_VERSIONS`: XLA aborts on a
flag it does not know), and never when `XLA_FLAGS` names it already: to keep
XLA's own choice, set `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`.
Accelerator backends ignore it.
"""

from importlib import metadata
import os
from typing import MutableMapping

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "-individual_convolution"
# [first, end): the jaxlib versions that know the flag and its +/- syntax (0.9.0
# to 0.10.2 checked); later ones are left alone until measured.
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
