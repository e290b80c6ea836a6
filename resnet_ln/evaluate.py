"""Evaluates a run's checkpoint on a split with the trainer's exact eval.

  python -m resnet_ln.evaluate --workdir=DIR [--step=N] [--split=NAME] [--config.FIELD=VALUE ...]

Every example of the split once, the last batch padded and the padding masked
out, on all devices (`trainer.evaluate`): on the run's eval split it reproduces
the trainer's eval numbers for that step. The metrics are printed and written
to `DIR/eval/<split>_<step>.json`. `--config.FIELD=VALUE` overrides the run's
config.json for this evaluation (e.g. `--config.eval_batch_size=64`,
`--config.data_dir=...`).
"""

import ast
import json
import os
import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import flags

from resnet_ln import cli
from resnet_ln import data
from resnet_ln.run import load_run
from resnet_ln.train import build
from resnet_ln.train import parallel as parallel_lib
from resnet_ln.train import trainer
from resnet_ln.train.state import TrainState
from resnet_ln.train.tasks import get_task
from resnet_ln.train.validation import ConfigError, validate_config

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined by `__main__` only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "The run's directory (as given to train.py).")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate; default: the newest.")
  flags.DEFINE_string("split", None, "Split to evaluate, any TFDS split spec (e.g. 'train', "
                      "'test[:50%]'); default: the run's eval split.")
  flags.mark_flag_as_required("workdir")

_OVERRIDE_PREFIX = "--config."
# What the checkpoint's variables were trained as: evaluating with other values would
# build another model, or feed it other inputs, than the one the weights belong to.
_FIXED_FIELDS = ("model", "model_kwargs", "dtype", "image_size", "seq_len", "num_classes",
                 "augment")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Sets `FIELD=VALUE` strings on `config` (VALUE read as a Python literal unless the
  field is a string).

  Raises:
    cli.UsageError: an unknown field, or a value of the wrong type.
  """
  for override in overrides:
    field, equals, text = override.partition("=")
    if not equals:
      raise cli.UsageError(f"{_OVERRIDE_PREFIX}{override}: expected "
                           f"{_OVERRIDE_PREFIX}FIELD=VALUE.")
    *parents, name = field.split(".")
    if field.split(".")[0] in _FIXED_FIELDS:
      raise cli.UsageError(
          f"{_OVERRIDE_PREFIX}{field}: the checkpoint's variables are those of the run's own "
          f"{field.split('.')[0]}; evaluate it as trained (overrides may change the data "
          "source, the batch and the split).")
    node = config
    for part in parents:
      node = node.get(part)
      if not isinstance(node, ml_collections.ConfigDict):
        break
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise cli.UsageError(f"{_OVERRIDE_PREFIX}{field}: the run's config has no such field.")
    value = text if isinstance(node[name], str) else _literal(text)
    try:
      node[name] = value
    except TypeError as e:
      raise cli.UsageError(f"{_OVERRIDE_PREFIX}{override}: {e}") from None


def _literal(text: str) -> Any:
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def evaluate_run(workdir: str, step: int | None = None, split: str | None = None,
                 overrides: Sequence[str] = ()) -> tuple[dict[str, float], str]:
  """Evaluates checkpoint `step` (the newest when None) of the run in `workdir` on `split`.

  Returns:
    (metrics, the path of the JSON file they were written to).

  Raises:
    RunError, cli.UsageError, ValueError: an unusable workdir, override or split.
  """
  run = load_run(workdir, step)
  config = ml_collections.ConfigDict(run.config.to_dict())
  apply_overrides(config, overrides)
  if split is not None:
    config.eval_split = split
  try:
    validate_config(config)
  except ConfigError as e:
    raise cli.UsageError(str(e)) from None
  try:
    info = data.get_dataset_info(config)
  except ValueError as e:
    if split is None:
      raise
    # The data module names config.eval_split; here the user typed --split.
    raise cli.UsageError(f"--split={split}: {e.__cause__ or e}") from None
  task = get_task(info.task, config.label_smoothing)
  parallel = parallel_lib.create_parallelism(config.parallelism, config.num_devices)
  parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
  model = build.create_model(config, info)
  variables = run.variables
  # Only params and batch_stats are read by the eval step; the rest is placeholder.
  state = TrainState(step=np.int32(run.step), params=variables["params"],
                     batch_stats=variables.get("batch_stats", {}), opt_state=(),
                     rng=np.zeros(2, np.uint32), loss_scale=np.float32(1.0),
                     good_steps=np.int32(0), skipped_steps=np.int32(0))
  _, eval_step_fn = build.step_functions(model, None, task, parallel)
  metrics = trainer.evaluate(eval_step_fn, parallel.put_state(state), config, parallel, task)
  record = {"step": run.step, "split": info.eval_split, **metrics}
  path = os.path.join(run.workdir, "eval",
                      f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', info.eval_split)}_{run.step}.json")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(record, f, indent=2)
  return metrics, path


_overrides: list[str] = []


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flags, after taking out the --config.FIELD=VALUE overrides."""
  _overrides.extend(arg[len(_OVERRIDE_PREFIX):] for arg in argv
                    if arg.startswith(_OVERRIDE_PREFIX))
  return cli.parse_flags([arg for arg in argv if not arg.startswith(_OVERRIDE_PREFIX)])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}; see --help.")
  metrics, path = evaluate_run(FLAGS.workdir, FLAGS.step, FLAGS.split, _overrides)
  for name, value in metrics.items():
    print(f"{name}: {value:.6g}")
  print(f"Written to {path}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, flags_parser=_parse_flags)
