"""What the package's commands set for XLA:CPU runs: one XLA option, and malloc's reuse.

**Convolutions outside YNNPACK.** On CPU, jaxlib 0.9 and 0.10 hand convolutions
(forward and both gradients) to YNNPACK, whose weight gradient runs over operands
XLA first copies to a batch-last layout (see "Where the CPU train step goes" in
`bench/RESULTS.md`). With `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`
XLA keeps its own convolutions and still gives YNNPACK the matmuls (every 1x1
convolution on CPU, see `resnet_ln.models.convolution`) and reductions. Measured
beside PyTorch on a 2-core CPU, it takes the ResNet train steps from 1.7 to 2.0
times PyTorch's time down to 1.3 to 1.7 times (`bench/RESULTS.md`, run D).

XLA reads `XLA_FLAGS` once, when JAX initialises its backends, so
`set_cpu_defaults` must run before that. It adds the option only for the jaxlib
versions known to accept it (`JAXLIB_VERSIONS`: XLA aborts on a flag it does not
know; measured on 0.10.2), and never when `XLA_FLAGS` names the flag already: to
keep XLA's own choice, set
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`.
Accelerator backends ignore it.

**Freed memory kept for reuse.** XLA:CPU allocates each execution's temporary
buffers afresh and frees them after it; glibc's malloc serves large blocks with
`mmap` (and per-thread arenas that it trims), so every train step page-faults
tens of megabytes in again: 23,000 minor faults per char-LM step, 37,000 per CIFAR
ResNet-20 step. `set_malloc_defaults` tells glibc (`mallopt`) to use one arena,
no `mmap` and no trimming below 2 GiB, so that freed blocks are reused: the
faults all but vanish and those steps took 0.80 and 0.88 of the time on 2 CPU
cores (`bench/RESULTS.md`, run E). The process then keeps its peak heap instead
of returning it to the system. It does this only where JAX will run on the CPU
(`JAX_PLATFORMS` names cpu first, or no CUDA, ROCm or TPU plugin is installed),
with glibc, and never when the environment sets one of `MALLOC_VARIABLES`: set
`MALLOC_ARENA_MAX` (glibc's own variable) to keep your choice. It must run before
JAX starts its threads, which keep the arena they first used.

The package's commands call both (`train.py` and every `python -m resnet_ln.*`
through `resnet_ln.cli`, the benchmarks through `bench`); importing `resnet_ln` or
its models does not, so your own process keeps XLA's and glibc's defaults unless
you call them first:

    from resnet_ln import xla_defaults
    xla_defaults.set_cpu_defaults()  # Before the first JAX computation.
    xla_defaults.set_malloc_defaults()
"""

import ctypes
from importlib import metadata
import os
import platform
from typing import Callable, Iterable, MutableMapping

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "-individual_convolution"
# [first, end): the jaxlib versions whose XLA knows the flag and its +/- syntax
# (found in the 0.9.0 and 0.10.0 binaries, used with 0.10.2); later ones are left
# alone until checked.
JAXLIB_VERSIONS = ((0, 9), (0, 11))

# glibc's environment variables for what `set_malloc_defaults` sets: the user's choice.
MALLOC_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                    "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
# (mallopt parameter from malloc.h, value): one arena, no mmap, trim only past 2 GiB.
MALLOPT_SETTINGS = ((-8, 1), (-4, 0), (-1, 2**31 - 1))  # M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD
# Distributions that give JAX an accelerator backend (name prefixes, normalised).
ACCELERATOR_PLUGINS = ("jax-cuda", "jax-rocm", "libtpu")


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


def _installed_distributions() -> list[str]:
  return [dist.metadata["Name"] or "" for dist in metadata.distributions()]


def _runs_on_cpu(environ: MutableMapping[str, str], installed: Iterable[str]) -> bool:
  """Whether JAX will pick its CPU backend: JAX_PLATFORMS says so, or no accelerator plugin."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  names = (name.lower().replace("_", "-") for name in installed)
  return not any(name.startswith(ACCELERATOR_PLUGINS) for name in names)


def _glibc_mallopt() -> Callable[[int, int], int] | None:
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  return getattr(ctypes.CDLL(None), "mallopt", None)


def set_malloc_defaults(environ: MutableMapping[str, str] = os.environ,
                        mallopt: Callable[[int, int], int] | None = None,
                        installed: Iterable[str] | None = None) -> bool:
  """Has glibc's malloc keep freed memory for reuse (`MALLOPT_SETTINGS`) on a CPU run.

  Args:
    environ: the environment to read (the process's by default).
    mallopt: glibc's `mallopt(param, value)`; by default the process's own.
    installed: the installed distributions' names; by default read from metadata.

  Returns:
    Whether the settings were made: False when the environment sets one of
    `MALLOC_VARIABLES`, JAX will run on an accelerator, or there is no glibc.
  """
  if any(name in environ for name in MALLOC_VARIABLES):
    return False
  if not _runs_on_cpu(environ, _installed_distributions() if installed is None else installed):
    return False
  mallopt = _glibc_mallopt() if mallopt is None else mallopt
  if mallopt is None:
    return False
  return all([mallopt(param, value) == 1 for param, value in MALLOPT_SETTINGS])
