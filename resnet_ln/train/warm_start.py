"""A fresh run's starting weights from `config.init_from`: pretrained files or another run.

    host_state = warm_start.load_initial_weights(config, model, host_state)

A torchvision-layout ResNet state dict (`.safetensors`, `.npz`, `.pth`/`.pt`)
loads through `resnet_ln.models.load_pretrained`; a resnet_ln workdir (its
newest checkpoint) or one of its checkpoint directories (`WORKDIR/checkpoints/N`)
loads by name through `merge_variables`. Either way, whatever does not fit (the
classifier for another number of classes, a stem for other input channels) and
whatever `config.init_exclude` matches keeps its fresh initialisation, and the
log lists each such variable. The optimiser state stays fresh.
"""

import os

import flax
import flax.linen as nn
import jax
import ml_collections
from absl import logging

from resnet_ln.models import load_pretrained
from resnet_ln.models import merge_variables
from resnet_ln.models.sequence import rename_legacy
from resnet_ln.train import checkpoint as checkpoint_lib
from resnet_ln.train.state import TrainState

STATE_DICT_SUFFIXES = (".safetensors", ".npz", ".pth", ".pt")


def checkpoint_source(path: str) -> tuple[str, int | None] | None:
  """(workdir, step) when `path` is a resnet_ln workdir or checkpoint directory, else None."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return path, None
  parent = os.path.dirname(path)
  if os.path.basename(path).isdigit() and os.path.basename(parent) == "checkpoints":
    return os.path.dirname(parent), int(os.path.basename(path))
  return None


def load_initial_weights(config: ml_collections.ConfigDict, model: nn.Module,
                         host_state: TrainState) -> TrainState:
  """`host_state` with its params and BatchNorm statistics taken from `config.init_from`.

  Raises:
    FileNotFoundError: the source does not exist.
    ValueError: a source of the wrong kind, or weights that do not fit the model
      beyond what is re-initialised (e.g. ResNet-50 weights into a ResNet-18).
  """
  source = config.init_from
  fresh = {"params": host_state.params}
  if host_state.batch_stats:
    fresh["batch_stats"] = host_state.batch_stats
  if not os.path.exists(source):
    raise FileNotFoundError(f"config.init_from={source!r}: no such file or directory.")
  run = checkpoint_source(source)
  try:
    if run:
      workdir, step = run
      saved = rename_legacy(checkpoint_lib.load_variables(workdir, step), fresh["params"])
      flat = flax.traverse_util.flatten_dict(saved, sep="/")
      variables, report = merge_variables(fresh, flat, config.init_exclude)
    elif os.path.isfile(source) and source.endswith(STATE_DICT_SUFFIXES):
      variables, report = load_pretrained(model, source, fresh, exclude=config.init_exclude)
    else:
      raise ValueError(
          "expected a torchvision-layout state dict file "
          f"({', '.join(STATE_DICT_SUFFIXES)}), a resnet_ln workdir (it holds checkpoints/) "
          "or one of its checkpoint directories (WORKDIR/checkpoints/STEP)")
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.init_from={source!r}: {e}") from None
  logging.info("Initialised from %s: %s", source, report)
  variables = jax.device_get(variables)
  return host_state.replace(params=variables["params"],
                            batch_stats=variables.get("batch_stats", host_state.batch_stats))
