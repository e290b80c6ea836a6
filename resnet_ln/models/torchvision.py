"""Loads torchvision ResNet weights (a `state_dict`) into this package's ResNets.

    torch_model = torchvision.models.resnet50(weights=...)
    state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    variables = from_torchvision("resnet50", state_dict)
    logits = get_model("resnet50").apply(variables, images_nhwc, train=False)

Images must be normalised as torchvision's were (ImageNet mean and std) and laid
out NHWC. No torch import: the values only need to be array-like.
"""

import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from resnet_ln.models import resnet

_MODELS = {
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "resnet101": resnet.ResNet101,
    "resnet152": resnet.ResNet152,
}
_MODULES = {"stem_conv": "conv1", "stem_norm": "bn1", "head": "fc",
            "proj_conv": "downsample.0", "proj_norm": "downsample.1"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias",
           "mean": "running_mean", "var": "running_var"}


def _torch_key(path: tuple[str, ...]) -> str:
  """('stage2_block0', 'proj_norm', 'mean') -> 'layer2.0.downsample.1.running_mean'."""
  parts = []
  for name in path[:-1]:
    block = re.fullmatch(r"stage(\d+)_block(\d+)", name)
    if block:
      parts.append(f"layer{block[1]}.{block[2]}")
    else:
      parts.append(_MODULES.get(name, re.sub(r"^norm", "bn", name)))
  return ".".join(parts + [_LEAVES[path[-1]]])


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


def from_torchvision(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Converts a torchvision ResNet `state_dict` to variables of `get_model(name)`.

  Args:
    name: 'resnet18', 'resnet34', 'resnet50', 'resnet101' or 'resnet152'.
    state_dict: torchvision's parameter and buffer names mapped to arrays
      (numpy, or anything np.asarray accepts); `num_batches_tracked` is ignored.

  Returns:
    {'params': ..., 'batch_stats': ...} for `get_model(name, num_classes=N)`,
    N being the rows of `fc.weight`, with default (torchvision-like) options.

  Raises:
    ValueError: unknown `name`, missing or unexpected keys, or a shape mismatch.
  """
  if name not in _MODELS:
    raise ValueError(f"No torchvision ResNet named {name!r}; known: {', '.join(_MODELS)}.")
  if "fc.weight" not in state_dict:
    raise ValueError(f"state_dict for {name} is missing key 'fc.weight'.")
  model = _MODELS[name](num_classes=np.shape(state_dict["fc.weight"])[0])
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))

  flat = flax.traverse_util.flatten_dict(shapes)
  keys = {path: _torch_key(path[1:]) for path in flat}
  missing = sorted(set(keys.values()) - set(state_dict))
  if missing:
    raise ValueError(f"state_dict for {name} is missing keys: {', '.join(missing)}.")
  unexpected = sorted(
      k for k in set(state_dict) - set(keys.values()) if not k.endswith("num_batches_tracked"))
  if unexpected:
    raise ValueError(f"state_dict for {name} has unexpected keys: {', '.join(unexpected)}.")

  variables = {}
  for path, shape in flat.items():
    key = keys[path]
    value = np.asarray(state_dict[key], dtype=np.float32)
    if value.shape != _torch_shape(shape.shape):
      raise ValueError(
          f"state_dict[{key!r}] has shape {value.shape}, {name} expects "
          f"{_torch_shape(shape.shape)}.")
    variables[path] = jnp.asarray(_to_flax(value), shape.dtype)
  return flax.traverse_util.unflatten_dict(variables)
