"""Pretrained weights in a model: load them, replace the classifier, freeze layers.

    model = get_model("resnet50", num_classes=10)
    fresh = model.init(rng, jnp.zeros((1, 224, 224, 3)), train=False)
    variables, report = load_pretrained(model, "resnet50.safetensors", fresh)
    print(report)  # params/head/kernel and params/head/bias: 1000 -> 10 classes, kept fresh.
    labels = jax.tree.map(lambda trainable: "train" if trainable else "freeze",
                          trainable_mask(variables["params"], r"^stage[1-3]"))
    tx = optax.multi_transform(
        {"train": optax.sgd(0.01, momentum=0.9), "freeze": optax.set_to_zero()}, labels)

A variable's path is its module names and its own name joined by '/', within its
collection: 'stage1_block0/conv1/kernel', 'head/bias', 'stem_norm/mean'. The
`exclude` and freeze regexes are searched (`re.search`) in these paths; the
report and flat sources key variables by 'collection/path'
('params/head/kernel', 'batch_stats/stem_norm/mean').
"""

import dataclasses
import os
import re
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_ln.models import resnet
from resnet_ln.models.torchvision import _first_names
from resnet_ln.models.torchvision import torchvision_to_flax

Variables = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What `merge_variables` (and `load_pretrained`) did with each model variable.

  Every variable of the model is in exactly one of the three, by 'collection/path'.

  Attributes:
    loaded: taken from the source.
    reinitialised: in the source but kept at their fresh initialisation, with
      the reason: 'excluded' (`exclude` matched) or 'shape' and both shapes.
    missing: absent from the source and kept fresh (allowed where `exclude` matches).
  """

  loaded: tuple[str, ...]
  reinitialised: dict[str, str]
  missing: tuple[str, ...]

  def __str__(self) -> str:
    lines = [f"{len(self.loaded)} variables loaded, {len(self.reinitialised)} reinitialised, "
             f"{len(self.missing)} missing from the source."]
    lines += [f"  reinitialised {path}: {reason}" for path, reason in self.reinitialised.items()]
    lines += [f"  missing {path}" for path in self.missing]
    return "\n".join(lines)


def _compile(regex: str | None) -> re.Pattern | None:
  """None for None or '' (an empty pattern would match every path)."""
  return re.compile(regex) if regex else None


def _within_collection(path: str) -> str:
  """'params/stage1_block0/conv1/kernel' -> 'stage1_block0/conv1/kernel'."""
  return path.split("/", 1)[1]


def merge_variables(
    variables: Variables, source: Mapping[str, Any], exclude: str | None = None
) -> tuple[dict[str, Any], LoadReport]:
  """Overwrites `variables` with the same-named, same-shaped arrays of `source`.

  The core of `load_pretrained`, for any flax-layout source, e.g. a checkpoint:
  `merge_variables(fresh, flax.traverse_util.flatten_dict(
  {'params': params, 'batch_stats': batch_stats}, sep='/'))`.

  Args:
    variables: the model's freshly initialised variables, e.g. {'params': ...,
      'batch_stats': ...}.
    source: arrays keyed 'collection/path' ('params/stage1_block0/conv1/kernel'),
      in flax layout (HWIO kernels).
    exclude: a regex over paths within a collection ('head/kernel',
      'stage1_block0/conv1/kernel'); what it matches keeps its fresh
      initialisation, and may be absent from `source`. None or '' excludes nothing.

  Returns:
    (variables, report): the merged variables (source arrays cast to the fresh
    ones' dtypes) and a `LoadReport`. A variable whose shape differs from the
    source's keeps its fresh initialisation and is reported.

  Raises:
    ValueError: `source` lacks variables of the model that `exclude` does not
      match, has variables the model lacks, or `exclude` matches no path; the
      first few names are given.
  """
  pattern = _compile(exclude)
  fresh = flax.traverse_util.flatten_dict(variables, sep="/")
  excluded = {path for path in fresh if pattern and pattern.search(_within_collection(path))}
  if pattern and not excluded:
    raise ValueError(
        f"exclude={exclude!r} matches no variable path; paths look like "
        f"{_first_names(sorted(_within_collection(path) for path in fresh))}.")
  missing = sorted(set(fresh) - set(source) - excluded)
  unexpected = sorted(set(source) - set(fresh))
  if missing or unexpected:
    problems = ["The source does not fit the model."]
    if missing:
      problems.append(f"Not in the source: {_first_names(missing)} (exclude= keeps such "
                      f"variables fresh).")
    if unexpected:
      problems.append(f"Not in the model: {_first_names(unexpected)}.")
    raise ValueError(" ".join(problems))

  merged, loaded, reinitialised = {}, [], {}
  for path, value in fresh.items():
    merged[path] = value
    if path not in source:
      continue
    if path in excluded:
      reinitialised[path] = "excluded"
    elif np.shape(source[path]) != value.shape:
      reinitialised[path] = f"shape {np.shape(source[path])} in source, {value.shape} in model"
    else:
      merged[path] = jnp.asarray(source[path], value.dtype)
      loaded.append(path)
  report = LoadReport(loaded=tuple(loaded), reinitialised=reinitialised,
                      missing=tuple(sorted(excluded - set(source))))
  return flax.traverse_util.unflatten_dict(merged, sep="/"), report


def load_pretrained(
    model: nn.Module,
    source: Mapping[str, Any] | str | os.PathLike,
    variables: Variables,
    *,
    exclude: str | None = None,
) -> tuple[dict[str, Any], LoadReport]:
  """Loads torchvision-layout ResNet weights into a model's fresh variables.

  Whatever does not fit keeps its fresh initialisation and is reported: the
  classifier when `num_classes` is not the source's, the stem conv when the
  input channels differ, anything `exclude` matches.

  Args:
    model: a torchvision-compatible ResNet, e.g. `get_model('resnet50', num_classes=10)`.
    source: a torchvision ResNet state dict, or a `.safetensors`, `.npz`, `.pth`
      or `.pt` file holding one (see `resnet_ln.models.load_state_dict`).
    variables: `model`'s freshly initialised variables.
    exclude: a regex over variable paths ('head/kernel', '^stage4'); what it
      matches keeps its fresh initialisation.

  Returns:
    (variables, report), as `merge_variables`.

  Raises:
    TypeError: `model` is not a ResNet.
    ValueError: a bottleneck ResNet with `stride_on_3x3=False` (torchvision
      strides the 3x3 conv; the shapes would fit but not the function), or keys
      that do not fit (e.g. ResNet-50 weights into a ResNet-18).
  """
  if not isinstance(model, resnet.ResNet):
    raise TypeError(f"load_pretrained loads torchvision ResNets into a ResNet, got {model!r}.")
  if model.block_cls is resnet.BottleneckBlock and not model.stride_on_3x3:
    raise ValueError(
        "torchvision's bottleneck ResNets stride the 3x3 conv: build the model with "
        "stride_on_3x3=True.")
  return merge_variables(variables, torchvision_to_flax(source), exclude)


def _backbone_width(params: Variables) -> tuple[int, Any]:
  """(channels, dtype) of the last block's last conv: what a ResNet's head reads."""
  blocks = [name for name in params if re.fullmatch(r"stage\d+_block\d+", name)]
  if not blocks:
    raise ValueError(
        f"replace_head needs ResNet params (a 'head' or 'stageN_blockM' modules), got "
        f"{_first_names(sorted(params))}.")
  last = params[max(blocks, key=lambda name: tuple(map(int, re.findall(r"\d+", name))))]
  kernel = last[max((name for name in last if re.fullmatch(r"conv\d+", name)),
                    key=lambda name: int(name[len("conv"):]))]["kernel"]
  return kernel.shape[-1], kernel.dtype


def replace_head(variables: Variables, num_classes: int, rng: jax.Array) -> dict[str, Any]:
  """`variables` with a fresh classifier `head` of `num_classes` outputs.

  Initialised as the ResNet's own `nn.Dense` (lecun-normal kernel, zero bias),
  in the dtype of the old head or, for headless variables (`from_torchvision(...,
  include_head=False)`), of the backbone. The other variables are shared, not copied.

  Args:
    variables: ResNet variables, with or without `params['head']`.
    num_classes: outputs of the new head.
    rng: a PRNG key for the kernel.
  """
  if num_classes < 1:
    raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
  params = variables["params"]
  if "head" in params:
    features, dtype = params["head"]["kernel"].shape[0], params["head"]["kernel"].dtype
  else:
    features, dtype = _backbone_width(params)
  head = nn.Dense(num_classes, param_dtype=dtype).init(rng, jnp.zeros((1, features), dtype))
  return {**variables, "params": {**params, "head": head["params"]}}


def trainable_mask(params: Variables, regex: str | None) -> Any:
  """A pytree of bools shaped as `params`: True to train, False where `regex` matches.

  For `optax.masked`, or as labels of `optax.multi_transform`:

      labels = jax.tree.map(lambda trainable: "train" if trainable else "freeze",
                            trainable_mask(params, r"^stage[1-3]"))
      tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)

  Args:
    params: parameters (or any collection, e.g. batch_stats).
    regex: searched in each path ('stage1_block0/conv1/kernel'); '^stage[1-3]'
      freezes the first three stages, '^(?!head)' all but the classifier. None
      or '' freezes nothing.

  Raises:
    ValueError: `regex` matches no path (a typo would otherwise freeze nothing).
  """
  pattern = _compile(regex)
  # tree_map_with_path keeps the containers (dict or FrozenDict), as optax needs.
  mask = jax.tree_util.tree_map_with_path(
      lambda path, _: not (pattern and pattern.search("/".join(k.key for k in path))), params)
  if pattern and all(jax.tree.leaves(mask)):
    paths = flax.traverse_util.flatten_dict(params, sep="/")
    raise ValueError(
        f"Freeze regex {regex!r} matches no parameter path; paths look like "
        f"{_first_names(sorted(paths))}.")
  return mask
