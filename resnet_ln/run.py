"""`load_run(workdir)`: a trained run's model and weights, rebuilt from its own files.

    run = resnet_ln.load_run("workdirs/default")
    logits = run.apply(images)  # images: [batch, *run.input_shape], normalised

A workdir holds what the trainer wrote: `config.json` (the config), `dataset.json`
(the `DatasetInfo` and the image normalisation) and `checkpoints/`. The model is
rebuilt with `build.create_model`, so this needs jax, flax (with the optax it
requires) and orbax only: no TensorFlow, TFDS or ml_collections. The config is the
one in effect at the loaded step (`config.json`, or the `config_history/` record
of a rerun that changed fields). The evaluate, predict, sample and export
commands all start here.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from typing import Any, Iterator

import flax
import flax.linen as nn
import jax

from resnet_ln.data.info import DatasetInfo
from resnet_ln.models.sequence import rename_legacy
from resnet_ln.train import build
from resnet_ln.train import checkpoint
from resnet_ln.train import workdir as workdir_lib
from resnet_ln.train.tasks import get_task

CONFIG_FILE = workdir_lib.CONFIG_FILE
DATASET_FILE = workdir_lib.DATASET_FILE


class RunError(ValueError):
  """A workdir that cannot be used as a trained run; the message names the file and the fix."""


class ConfigView(Mapping):
  """A read-only view with attribute access over a run's `config.json`."""

  def __init__(self, values: Mapping[str, Any]):
    self._values = dict(values)

  def __getattr__(self, name: str) -> Any:
    try:
      value = self._values[name]
    except KeyError:
      raise AttributeError(f"The run's {CONFIG_FILE} has no field {name!r}.") from None
    return ConfigView(value) if isinstance(value, Mapping) else value

  def __getitem__(self, name: str) -> Any:
    return getattr(self, name)

  def __iter__(self) -> Iterator[str]:
    return iter(self._values)

  def __len__(self) -> int:
    return len(self._values)

  def __repr__(self) -> str:
    return f"ConfigView({self._values!r})"

  def to_dict(self) -> dict[str, Any]:
    return json.loads(json.dumps(self._values))


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run, ready for inference.

  Attributes:
    workdir: the run's --workdir.
    step: the step of the loaded checkpoint.
    config: the run's config (attribute access over `config.json`).
    info: the dataset as the model saw it (`DatasetInfo`).
    model: the Flax module, without a BatchNorm axis name (plain `apply` works).
    variables: `{'params': ..., 'batch_stats': ...}` NumPy arrays.
    normalization: (mean, std) per image channel, in [0, 1] pixel units.
  """

  workdir: str
  step: int
  config: ConfigView
  info: DatasetInfo
  model: nn.Module
  variables: dict[str, Any]
  normalization: tuple[tuple[float, ...], tuple[float, ...]]

  @property
  def task(self) -> str:
    """'classification' or 'language_modeling'."""
    return self.info.task

  @property
  def label_names(self) -> tuple[str, ...]:
    """The class names (label i is label_names[i]); () when the dataset has none."""
    return self.info.label_names

  @property
  def input_shape(self) -> tuple[int, ...]:
    """One model input: (height, width, channels), or (seq_len,)."""
    return tuple(self.info.example_shape)

  def apply(self, inputs: jax.Array, **kwargs: Any) -> jax.Array:
    """The model's outputs in inference mode (`train=False`): logits."""
    return self.model.apply(self.variables, inputs, train=False, **kwargs)


def load_run(workdir: str, step: int | None = None) -> Run:
  """The run in `workdir`, with the variables of checkpoint `step` (the newest when None).

  Raises:
    RunError: a missing `config.json` or `dataset.json`, no checkpoint (or not
      `step`), or a config that the current code cannot rebuild.
  """
  workdir = os.path.abspath(workdir)
  _read_json(workdir, CONFIG_FILE, missing=(
      "it is not a resnet_ln workdir (train.py writes config.json there); check --workdir"))
  record = _read_json(workdir, DATASET_FILE, missing=(
      "the run predates dataset.json: rerun the same train.py command once on this workdir "
      "(it writes dataset.json and re-evaluates the last checkpoint without training further)"))
  step = _checkpoint_step(workdir, step)
  # The config in effect at that step: a rerun with changed fields records them beside.
  config_path = os.path.relpath(workdir_lib.config_file(workdir, step), workdir)
  config = ConfigView(_read_json(workdir, config_path, missing="it was just listed"))
  info = _dataset_info(record, workdir)
  try:
    model = build.create_model(config, info)
  except (TypeError, ValueError, AttributeError, KeyError) as e:
    raise RunError(f"{os.path.join(workdir, CONFIG_FILE)} does not build a model with this "
                   f"version of resnet_ln: {e}") from None
  if hasattr(model, "axis_name"):
    model = model.clone(axis_name=None)
  variables = _matching_variables(model, info, checkpoint.load_variables(workdir, step),
                                  workdir, step)
  normalization = record.get("normalization", {})
  return Run(workdir=workdir, step=step, config=config, info=info, model=model,
             variables=variables,
             normalization=(tuple(normalization.get("mean", ())),
                            tuple(normalization.get("std", ()))))


def _read_json(workdir: str, name: str, missing: str) -> dict[str, Any]:
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    raise RunError(f"No {path}: {missing}.")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise RunError(f"Cannot read {path}: {e}.") from None


def _dataset_info(record: dict[str, Any], workdir: str) -> DatasetInfo:
  """The `DatasetInfo` of `dataset.json` (JSON lists back to tuples; unknown keys ignored)."""
  fields = {}
  for field in dataclasses.fields(DatasetInfo):
    if field.name in record:
      value = record[field.name]
      fields[field.name] = tuple(value) if isinstance(value, list) else value
  try:
    info = DatasetInfo(**fields)
    get_task(info.task)
  except (TypeError, ValueError) as e:
    raise RunError(f"{os.path.join(workdir, DATASET_FILE)} is not a dataset record that this "
                   f"version of resnet_ln reads: {e}") from None
  return info


def _checkpoint_step(workdir: str, step: int | None) -> int:
  """`step`, or the newest saved step, checked against the checkpoints present."""
  directory = os.path.join(workdir, "checkpoints")
  saved = sorted(int(name) for name in os.listdir(directory) if name.isdigit()) \
      if os.path.isdir(directory) else []
  if not saved:
    raise RunError(f"No checkpoint in {directory}: train first (train.py writes one at the end "
                   "of training), or check --workdir.")
  if step is None:
    return saved[-1]
  if step not in saved:
    raise RunError(f"No checkpoint of step {step} in {directory}; saved steps: {saved}.")
  return step


def _matching_variables(model: nn.Module, info: DatasetInfo, variables: dict[str, Any],
                        workdir: str, step: int) -> dict[str, Any]:
  """The checkpoint's variables, checked against the model's."""
  dummy = jax.ShapeDtypeStruct((1, *info.example_shape), get_task(info.task).input_dtype)
  expected = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                            dummy)
  variables = rename_legacy(variables, expected["params"])

  def shapes(tree):
    return {path: tuple(leaf.shape) for path, leaf in
            flax.traverse_util.flatten_dict(tree, sep="/").items()}

  for collection in ("params", "batch_stats"):
    want, have = shapes(expected.get(collection, {})), shapes(variables.get(collection, {}))
    if want != have:
      diffs = sorted(set(want.items()) ^ set(have.items()))[:4]
      raise RunError(
          f"The checkpoint {os.path.join(workdir, 'checkpoints', str(step))} does not fit the "
          f"model that {os.path.join(workdir, CONFIG_FILE)} builds with this version of "
          f"resnet_ln ({collection} differ, e.g. {diffs}).")
  return variables
