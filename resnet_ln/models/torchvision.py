"""Loads torchvision ResNet weights (a `state_dict`) into this package's ResNets.

    variables = from_torchvision("resnet50", "resnet50.safetensors")
    logits = get_model("resnet50").apply(variables, images_nhwc, train=False)

A state dict is a mapping of torchvision's parameter and buffer names to arrays,
or a `.safetensors`, `.npz`, `.pth` or `.pt` file holding one (`load_state_dict`).
Images must be normalised with `IMAGENET_MEAN` and `IMAGENET_STD`, as
torchvision's were, and laid out NHWC. Only `.pth`/`.pt` files need torch.
"""

import os
import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from resnet_ln.models.registry import get_model

# The registered ResNets that torchvision publishes weights for.
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

# Per-channel mean and standard deviation of torchvision's ImageNet weights, in
# [0, 1] pixel units: feed them (x / 255 - IMAGENET_MEAN) / IMAGENET_STD.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

StateDict = Mapping[str, Any]
PathLike = str | os.PathLike

# Module names here -> torchvision's, outside the blocks and inside them (where
# normK is bnK and convK keeps its name).
_TOP_MODULES = {"stem_conv": "conv1", "stem_norm": "bn1", "head": "fc"}
_BLOCK_MODULES = {"proj_conv": "downsample.0", "proj_norm": "downsample.1"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias",
           "mean": "running_mean", "var": "running_var"}
_FLAX_TOP_MODULES = {torch: ours for ours, torch in _TOP_MODULES.items()}
_FLAX_BLOCK_MODULES = {torch: ours for ours, torch in _BLOCK_MODULES.items()}
_TORCH_KEY = re.compile(
    r"(?:(?P<top>conv1|bn1|fc)"
    r"|layer(?P<stage>\d+)\.(?P<block>\d+)\.(?P<inner>conv\d+|bn\d+|downsample\.[01]))"
    r"\.(?P<leaf>weight|bias|running_mean|running_var)")
# How many names an error lists before "and N more".
_MAX_NAMES = 5

_PTH_ADVICE = (
    "Reading .pth/.pt files needs torch (pip install torch). Or convert the file "
    "once where torch is installed:\n"
    "  python -c \"import torch, numpy as np; sd = torch.load({path!r}, "
    "map_location='cpu', weights_only=True); "
    "np.savez({npz!r}, **{{k: v.numpy() for k, v in sd.items()}})\"\n"
    "and load {npz!r} instead.")


def _first_names(names: list[str]) -> str:
  """'a, b, c' for a few names, 'a, ..., e and 95 more' for many."""
  shown = ", ".join(names[:_MAX_NAMES])
  return shown if len(names) <= _MAX_NAMES else f"{shown} and {len(names) - _MAX_NAMES} more"


def load_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a state dict from a `.safetensors`, `.npz`, `.pth` or `.pt` file.

  `.safetensors` needs the `safetensors` package; `.pth`/`.pt` need torch (read
  with `weights_only=True`, so no pickled code runs). Keys are returned as stored.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: an extension other than the four above, or a `.pth`/`.pt` file
      holding more than tensors (e.g. a training checkpoint with the state dict
      under one of its keys).
    ImportError: a `.pth`/`.pt` file without torch; the message says how to convert it.
  """
  path = os.fspath(path)
  stem, extension = os.path.splitext(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No state dict file at {path!r}.")
  if extension not in (".safetensors", ".npz", ".pth", ".pt"):
    raise ValueError(
        f"Cannot read a state dict from {path!r}: expected a .safetensors, .npz, .pth "
        f"or .pt file.")
  if extension == ".safetensors":
    import safetensors.numpy  # Lazily: only this format needs it.
    return safetensors.numpy.load_file(path)
  if extension == ".npz":
    with np.load(path, allow_pickle=False) as npz:
      return {key: npz[key] for key in npz.files}
  try:
    import torch
  except ImportError as e:
    raise ImportError(_PTH_ADVICE.format(path=path, npz=f"{stem}.npz")) from e
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
  if not_tensors:
    raise ValueError(
        f"{path!r} holds more than a state dict of tensors ({_first_names(not_tensors)} "
        f"are not tensors): save `model.state_dict()` alone.")
  # numpy has no bfloat16; every float fits float32, which the models use anyway.
  return {key: (value.float() if value.dtype == torch.bfloat16 else value).numpy()
          for key, value in state_dict.items()}


def _clean_state_dict(state_dict_or_path: StateDict | PathLike) -> dict[str, Any]:
  """The state dict at a path or in a mapping, without a DataParallel `module.`
  prefix and without `num_batches_tracked` (a step counter, not a weight)."""
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    state_dict_or_path = load_state_dict(state_dict_or_path)
  return {key.removeprefix("module."): value for key, value in state_dict_or_path.items()
          if not key.endswith("num_batches_tracked")}


def _torch_key(path: str) -> str:
  """'stage2_block0/proj_norm/mean' -> 'layer2.0.downsample.1.running_mean'."""
  *modules, leaf = path.split("/")
  parts = []
  for name in modules:
    block = re.fullmatch(r"stage(\d+)_block(\d+)", name)
    if block:
      parts.append(f"layer{block[1]}.{block[2]}")
    elif parts:
      parts.append(_BLOCK_MODULES.get(name, re.sub(r"^norm", "bn", name)))
    else:
      parts.append(_TOP_MODULES[name])
  return ".".join(parts + [_LEAVES[leaf]])


def _flax_path(key: str) -> str | None:
  """'layer2.0.downsample.1.running_mean' -> 'batch_stats/stage2_block0/proj_norm/mean'
  (None for a key that is no torchvision ResNet's)."""
  match = _TORCH_KEY.fullmatch(key)
  if not match:
    return None
  if match["top"]:
    modules = [_FLAX_TOP_MODULES[match["top"]]]
  else:
    inner = match["inner"]
    modules = [f"stage{match['stage']}_block{match['block']}",
               _FLAX_BLOCK_MODULES.get(inner, re.sub(r"^bn", "norm", inner))]
  leaf = {"running_mean": "mean", "running_var": "var", "bias": "bias"}.get(match["leaf"])
  if leaf is None:  # 'weight': a norm's scale, or a conv's or the dense head's kernel.
    leaf = "scale" if "norm" in modules[-1] else "kernel"
  collection = "batch_stats" if leaf in ("mean", "var") else "params"
  return "/".join([collection, *modules, leaf])


def _to_flax(value: np.ndarray) -> np.ndarray:
  """torch layout -> flax layout: conv OIHW -> HWIO, dense [out, in] -> [in, out]."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value.T


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch layout of a flax parameter shape (the inverse of `_to_flax`)."""
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  return tuple(reversed(flax_shape))


def torchvision_to_flax(state_dict_or_path: StateDict | PathLike) -> dict[str, np.ndarray]:
  """A torchvision ResNet state dict as flat flax-layout variables.

  Returns:
    {'params/stage1_block0/conv1/kernel': HWIO array, 'batch_stats/stem_norm/mean':
    ..., ...}, float32, the form `resnet_ln.models.merge_variables` takes.

  Raises:
    ValueError: keys that no torchvision ResNet has (the first few are named).
  """
  state_dict = _clean_state_dict(state_dict_or_path)
  paths = {key: _flax_path(key) for key in state_dict}
  unknown = sorted(key for key, path in paths.items() if path is None)
  if unknown:
    raise ValueError(f"Not torchvision ResNet keys: {_first_names(unknown)}.")
  return {paths[key]: _to_flax(np.asarray(value, np.float32))
          for key, value in state_dict.items()}


def from_torchvision(
    name: str,
    state_dict_or_path: StateDict | PathLike,
    *,
    num_classes: int | None = None,
    include_head: bool = True,
) -> dict[str, Any]:
  """Converts a torchvision ResNet state dict to variables of `get_model(name)`.

  Args:
    name: 'resnet18', 'resnet34', 'resnet50', 'resnet101' or 'resnet152'.
    state_dict_or_path: torchvision's parameter and buffer names mapped to arrays
      (numpy, or anything np.asarray accepts), or a file holding them (see
      `load_state_dict`). A `module.` prefix and `num_batches_tracked` are ignored.
    num_classes: if given, the rows `fc.weight` must have (a check).
    include_head: False ignores `fc.*` (the state dict may lack them) and
      returns variables without `head`, for a model whose head is initialised
      elsewhere (`resnet_ln.models.replace_head`).

  Returns:
    {'params': ..., 'batch_stats': ...} for `get_model(name, num_classes=N)`,
    N being the rows of `fc.weight`, with default (torchvision-like) options.

  Raises:
    ValueError: unknown `name`, missing or unexpected keys, a shape mismatch, or
      `num_classes` other than the rows of `fc.weight`.
  """
  if name not in TORCHVISION_RESNETS:
    raise ValueError(
        f"No torchvision ResNet named {name!r}; known: {', '.join(TORCHVISION_RESNETS)}.")
  state_dict = _clean_state_dict(state_dict_or_path)
  if include_head:
    if "fc.weight" not in state_dict:
      raise ValueError(
          f"state_dict for {name} is missing key 'fc.weight' (include_head=False loads a "
          f"state dict without the classifier).")
    rows = np.shape(state_dict["fc.weight"])[0]
    if num_classes is not None and num_classes != rows:
      raise ValueError(
          f"num_classes={num_classes}, but 'fc.weight' of the state dict for {name} has "
          f"{rows} rows (include_head=False drops the classifier).")
    num_classes = rows
  else:
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
  model = get_model(name, num_classes=num_classes or 1000)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))

  flat = flax.traverse_util.flatten_dict(shapes, sep="/")
  if not include_head:
    flat = {path: shape for path, shape in flat.items() if not path.startswith("params/head/")}
  keys = {path: _torch_key(path.split("/", 1)[1]) for path in flat}
  missing = sorted(set(keys.values()) - set(state_dict))
  if missing:
    raise ValueError(f"state_dict for {name} is missing keys: {_first_names(missing)}.")
  unexpected = sorted(set(state_dict) - set(keys.values()))
  if unexpected:
    raise ValueError(f"state_dict for {name} has unexpected keys: {_first_names(unexpected)}.")

  variables = {}
  for path, shape in flat.items():
    key = keys[path]
    value = np.asarray(state_dict[key], dtype=np.float32)
    if value.shape != _torch_shape(shape.shape):
      raise ValueError(
          f"state_dict[{key!r}] has shape {value.shape}, {name} expects "
          f"{_torch_shape(shape.shape)}.")
    variables[path] = jnp.asarray(_to_flax(value), shape.dtype)
  return flax.traverse_util.unflatten_dict(variables, sep="/")
