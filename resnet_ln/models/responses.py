"""Layer responses of a ResNet: the spread of each norm's output (Deep Residual Learning, Fig. 7).

The paper's Figure 7 plots, for each 3x3 layer, the standard deviation of its
response: the output of the layer's BatchNorm, before the ReLU and before the
shortcut addition. Flax's `capture_intermediates` records those outputs without
any change to the model:

    stds = layer_responses(CifarResNet(20), variables, images)
    # {'stem_norm': 0.71, 'stage1_block0/norm1': 0.52, ...}, in network order

`norm_outputs` returns the captured outputs themselves.
"""

import re
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp

_NORM_TYPES = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm)
_BLOCK_NORM = re.compile(r"^stage\d+_block\d+/norm\d+$")


def _natural_key(path: str) -> tuple:
  """'stage1_block10/norm2' sorts after 'stage1_block9/norm2'."""
  return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path))


def norm_outputs(
    model: nn.Module, variables: Any, images: jax.Array, *, include_stem: bool = True
) -> dict[str, jax.Array]:
  """The output of each block norm of `model` (and of its stem's), in eval mode.

  Args:
    model: a `ResNet` (e.g. `CifarResNet(20)`, `CifarPlain(56)`) with a norm;
      its blocks' norms are `stageI_blockJ/normK`.
    variables: its `params` and `batch_stats`.
    images: [batch, height, width, channels].
    include_stem: also return the stem's norm (`stem_norm`), the first 3x3 layer
      of a CIFAR net. For `BasicBlock` nets every block norm follows a 3x3 conv
      (CIFAR ResNet-20: 18 block layers, 19 with the stem); a bottleneck block's
      `norm1`/`norm3` follow its 1x1 convs.

  Returns:
    layer path -> [batch, height, width, channels] output, in the order the layers run.

  Raises:
    ValueError: the model has no norm layers (norm=None) to capture.
  """

  def is_norm(module: nn.Module, method_name: str) -> bool:
    return method_name == "__call__" and isinstance(module, _NORM_TYPES)

  _, state = model.apply(variables, images, train=False, capture_intermediates=is_norm,
                         mutable=["intermediates"])
  # {('stage1_block0', 'norm1', '__call__'): (output,), ...}
  flat = {"/".join(path[:-1]): value[0] for path, value in
          traverse_util.flatten_dict(state.get("intermediates", {})).items()}
  kept = {path: out for path, out in flat.items()
          if _BLOCK_NORM.match(path) or (include_stem and path == "stem_norm")}
  if not kept:
    raise ValueError(
        f"found no block norms in {type(model).__name__} (norm="
        f"{getattr(model, 'norm', None)!r}); captured: {sorted(flat) or 'nothing'}.")
  order = sorted(kept, key=lambda path: (path != "stem_norm", _natural_key(path)))
  return {path: kept[path] for path in order}


def layer_responses(
    model: nn.Module, variables: Any, images: jax.Array, *, include_stem: bool = True
) -> dict[str, float]:
  """The standard deviation of each norm layer's output over a batch, in eval mode.

  For each channel the standard deviation is taken over the batch and the
  spatial positions; the layer's value is the mean over its channels (so a
  BatchNorm layer's value follows its learned scales, not the spread of its
  biases across channels). Arguments as for `norm_outputs`.

  Returns:
    layer path -> standard deviation, in the order the layers run.
  """
  names = []

  def stds(variables: Any, images: jax.Array) -> list[jax.Array]:
    outputs = norm_outputs(model, variables, images, include_stem=include_stem)
    names[:] = outputs  # A list keeps the network order (jit would sort a dict's keys).
    return [_channel_std(out) for out in outputs.values()]

  values = jax.jit(stds)(variables, images)
  return dict(zip(names, map(float, values)))


def _channel_std(outputs: jax.Array) -> jax.Array:
  """outputs: [batch, height, width, channels] -> the mean over channels of their std."""
  outputs = jnp.asarray(outputs, jnp.float32)
  return jnp.mean(jnp.std(outputs.reshape(-1, outputs.shape[-1]), axis=0))

