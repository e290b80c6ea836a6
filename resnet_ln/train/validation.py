"""Config checks that run before anything is built or compiled, and the memory they cannot check.

Each failure is one `ConfigError` naming the field, its value and what is allowed.
"""

import contextlib
import math
import os
import re
from typing import Any, Iterator

import jax
import ml_collections

from resnet_ln.data.pipeline import MAX_SEED, process_batch_size
from resnet_ln.models import get_model
from resnet_ln.train.build import DTYPES
from resnet_ln.train.optimizer import OPTIMIZERS, SCHEDULES
from resnet_ln.train.parallel import PARALLELISMS


class ConfigError(ValueError):
  """An invalid config value; the message names the field."""


def model_error(config: ml_collections.ConfigDict, error: Exception) -> ConfigError:
  """The ConfigError for a model that cannot be built from config.model / model_kwargs."""
  return ConfigError(f"config.model={config.model!r} / config.model_kwargs: {error}")


def _require(ok: bool, field: str, value: Any, allowed: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}.")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_finite(config: ml_collections.ConfigDict, prefix: str = "config") -> None:
  """Refuses inf and NaN in every float field, nested configs and sequences included."""
  for name, value in config.items():
    field = f"{prefix}.{name}"
    if isinstance(value, ml_collections.ConfigDict):
      _check_finite(value, field)
    values = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
      raise ConfigError(f"{field}={value!r} is invalid: must be a finite number.")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first invalid field of a training config."""
  _check_finite(config)
  _require(bool(config.dataset), "dataset", config.dataset,
           "set --config.dataset (image_folder:PATH, text_files:GLOB, digits, or a TFDS name)")
  try:
    get_model(config.model, **config.model_kwargs)
  except TypeError:
    pass  # E.g. a missing vocab_size, which comes from the dataset: see `model_error`.
  except ValueError as e:
    raise model_error(config, e) from None
  for field, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                         ("parallelism", PARALLELISMS), ("dtype", tuple(DTYPES))):
    _require(config[field] in allowed, field, config[field], f"one of {allowed}")
  for field in ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps",
                "max_to_keep"):
    _require(_is_int(config[field]) and config[field] > 0, field, config[field],
             "must be a positive integer")
  image_size, seq_len = config.image_size, config.seq_len
  _require(image_size is None or (_is_int(image_size) and image_size > 0), "image_size",
           image_size, "must be a positive integer, or None for the dataset's own size")
  _require(_is_int(seq_len) and seq_len > 0, "seq_len", seq_len, "must be a positive integer")
  _require(_is_int(config.seed) and 0 <= config.seed < MAX_SEED, "seed", config.seed,
           f"must be an integer in [0, {MAX_SEED})")
  for field in ("eval_every_steps", "num_devices", "warmup_steps"):
    _require(_is_int(config[field]) and config[field] >= 0, field, config[field],
             "must be a non-negative integer")
  _require(config.num_train_steps > 0 or config.num_epochs > 0, "num_train_steps",
           config.num_train_steps, "set num_train_steps > 0, or num_epochs > 0")
  for field in ("learning_rate", "weight_decay", "grad_clip_norm", "warmup_epochs"):
    _require(config[field] >= 0, field, config[field], "must be >= 0")
  _require(0 <= config.momentum < 1, "momentum", config.momentum, "must be in [0, 1)")
  _require(0 <= config.label_smoothing < 1, "label_smoothing", config.label_smoothing,
           "must be in [0, 1)")
  data_dir = config.data_dir
  # A typo here would otherwise make TFDS download the dataset into a new directory.
  _require(not data_dir or "://" in data_dir or os.path.isdir(data_dir), "data_dir", data_dir,
           "no such directory (None: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  if config.schedule == "piecewise":
    boundaries = config.lr_boundaries_epochs or config.lr_boundaries
    _require(len(boundaries) == len(config.lr_factors), "lr_factors", config.lr_factors,
             f"needs one factor per boundary ({len(boundaries)})")
  for field in ("init_exclude", "freeze"):
    try:
      re.compile(config[field] or "")
    except re.error as e:
      raise ConfigError(f"config.{field}={config[field]!r} is not a regular expression ({e}); "
                        "it is searched in parameter paths such as "
                        "'stage1_block0/conv1/kernel'.") from None
  _require(not config.init_from or os.path.exists(config.init_from), "init_from",
           config.init_from, "no such file or directory")
  profile = config.profile_steps
  bounds = profile.split(":") if profile else ["0", "1"]
  _require(len(bounds) == 2 and all(b.isdigit() for b in bounds)
           and int(bounds[0]) < int(bounds[1]), "profile_steps", profile,
           "expected 'START:STOP' with 0 <= START < STOP (steps), or '' for no profile")


# cgroup v1 reports "no limit" as a number near 2**63; v2 as "max".
_NO_CGROUP_LIMIT = 2**62


def _read_lines(path: str) -> list[str] | None:
  try:
    with open(path) as f:
      return f.read().splitlines()
  except (OSError, UnicodeDecodeError):
    return None


def _unescape_octal(field: str) -> str:
  """A mountinfo path with its escapes (a space is `\\040`) undone."""
  return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _cgroup_mounts(mountinfo: list[str]) -> list[tuple[str, str, str]]:
  """(kind, root in its hierarchy, mount point) of each mounted cgroup hierarchy
  that holds memory limits: kind "v2" (the unified hierarchy) or "v1" (the
  memory controller's)."""
  mounts = []
  for line in mountinfo:
    # ID parent major:minor root mount-point options [optional...] - type source super-options
    mount, separator, filesystem = line.partition(" - ")
    mount, filesystem = mount.split(), filesystem.split()
    if not separator or len(mount) < 5 or len(filesystem) < 3:
      continue
    if filesystem[0] == "cgroup2":
      kind = "v2"
    elif filesystem[0] == "cgroup" and "memory" in filesystem[2].split(","):
      kind = "v1"
    else:
      continue
    mounts.append((kind, _unescape_octal(mount[3]), _unescape_octal(mount[4])))
  return mounts


def cgroup_memory_limit(membership: str = "/proc/self/cgroup",
                        mountinfo: str = "/proc/self/mountinfo") -> int | None:
  """The lowest memory limit, in bytes, of this process's cgroup and its ancestors.

  Reads cgroup v2 (`memory.max`) and v1 (`memory.limit_in_bytes`) wherever the
  hierarchies are mounted (`mountinfo`). A mount may show a hierarchy from below
  its root (a container's own cgroup): the process's path (`membership`) is
  taken relative to the mount's root, and the walk up stops at the mount point.
  None when no limit is set or nothing can be read.
  """
  lines, mounts = _read_lines(membership), _read_lines(mountinfo)
  if lines is None or mounts is None:
    return None
  paths = {}  # kind -> the process's path in that hierarchy
  for line in lines:
    fields = line.split(":", 2)  # hierarchy-ID:controllers:path
    if len(fields) != 3:
      continue
    _, controllers, path = fields
    if controllers == "":
      paths["v2"] = path
    elif "memory" in controllers.split(","):
      paths["v1"] = path
  limit_file = {"v2": "memory.max", "v1": "memory.limit_in_bytes"}
  limits = []
  for kind, mount_root, mount_point in _cgroup_mounts(mounts):
    if kind not in paths:
      continue
    root_parts = [part for part in mount_root.split("/") if part]
    parts = [part for part in paths[kind].split("/") if part]
    if parts[:len(root_parts)] != root_parts:
      continue  # The process's cgroup is not in what this mount shows.
    parts = parts[len(root_parts):]
    for depth in range(len(parts), -1, -1):
      content = _read_lines(os.path.join(mount_point, *parts[:depth], limit_file[kind]))
      value = content[0].strip() if content else ""
      if re.fullmatch(r"[0-9]+", value) and int(value) < _NO_CGROUP_LIMIT:
        limits.append(int(value))
  return min(limits, default=None)


def host_memory() -> tuple[int, str] | None:
  """(bytes, what they are) of the memory this process may use: the machine's
  physical memory, or its cgroup's (container's) limit where that is lower; None
  where the OS says neither."""
  try:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    physical = None
  limit = cgroup_memory_limit()
  if limit is not None and (physical is None or limit < physical):
    return limit, "memory limit of its container (cgroup)"
  return None if physical is None else (physical, "memory")


def check_batches_fit_host(config: ml_collections.ConfigDict,
                           example_shape: tuple[int, ...]) -> None:
  """Refuses a batch whose inputs alone would not fit in this host's memory.

  The input pipeline would otherwise try to assemble it and never finish. Each
  process holds its share of the global batch, 4 bytes per input value (float32
  images or int32 tokens). In a container the memory is the container's limit.
  """
  memory = host_memory()
  if memory is None:
    return
  memory, what = memory
  size_field = "seq_len" if len(example_shape) == 1 else "image_size"
  for field in ("batch_size", "eval_batch_size"):
    batch = getattr(config, field)
    needed = process_batch_size(batch, field) * math.prod(example_shape) * 4
    if needed > memory:
      raise ConfigError(
          f"config.{field}={batch} is invalid: one batch of {'x'.join(map(str, example_shape))} "
          f"inputs takes {needed / 2**30:,.1f} GiB on each host, more than the "
          f"{memory / 2**30:,.1f} GiB {what}. Lower config.{field}, or "
          f"config.{size_field} (now {config[size_field]}).")


@contextlib.contextmanager
def naming_memory_limits(config: ml_collections.ConfigDict) -> Iterator[None]:
  """Turns XLA's out-of-memory errors into a ConfigError that names the fields to lower.

  What fits depends on the devices, so it cannot be checked beforehand: an
  allocation fails when the state is built or a step first runs.
  """
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
      raise
    reason = str(e).strip().splitlines()[0]
    raise ConfigError(
        f"The run does not fit in the devices' memory ({reason}). Lower config.batch_size "
        f"(now {config.batch_size}), config.image_size (now {config.image_size}) or "
        f"config.seq_len (now {config.seq_len}), or choose a smaller model "
        f"(config.model={config.model!r}, config.model_kwargs). Existing checkpoints are "
        "untouched."
    ) from e
