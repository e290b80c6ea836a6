"""Where a benchmark ran: the host and the code, recorded beside every figure."""

import importlib.metadata
import os
import platform
import subprocess


def cpu_model() -> str:
  """The host CPU's model name (from /proc/cpuinfo where there is one)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def load_average() -> float | None:
  """The 1-minute load average: other jobs on the host slow a CPU run."""
  return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def git_commit() -> str | None:
  """The repository's short commit hash, or None outside a git checkout."""
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None


def package_version(package: str) -> str | None:
  """The installed version of `package`, or None when it is not installed."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None
