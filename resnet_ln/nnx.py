"""The registered models as Flax NNX modules, through `flax.nnx.bridge`.

    model = resnet_ln.nnx.get_model("cifar_resnet20", jnp.zeros((1, 32, 32, 3)),
                                    rngs=nnx.Rngs(0))
    logits = model(images)                                        # eval mode
    logits = model(images, train=True, mutable=["batch_stats"])   # updates in place
    maps = model(images, method="features")

The NNX module holds the same variables as the Linen model (`stem_conv/kernel`,
`stage1_block0/norm1/mean`, ...), so `variables` and `load_variables` move them to
and from Linen's `{'params': ..., 'batch_stats': ...}` (checkpoints,
`from_torchvision`) unchanged. Like `resnet_ln.models`, it needs only jax and flax.
"""

from typing import Any, Mapping

from flax import nnx
from flax.nnx import bridge

from resnet_ln import models

# Linen collection -> the NNX variable type `bridge.ToNNX` stores it as.
_COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def get_model(name: str, *sample_args: Any, rngs: nnx.Rngs, **kwargs: Any) -> bridge.ToNNX:
  """Builds `resnet_ln.models.get_model(name, **kwargs)` as an initialised NNX module.

  Args:
    name: a registered model name (`resnet_ln.models.list_models()`).
    *sample_args: example inputs for the lazy initialisation, e.g. images
      [1, height, width, channels] or tokens [1, time] (only shapes matter).
    rngs: the NNX rngs to initialise from ('params'; 'dropout' when training
      with dropout or drop path).
    **kwargs: the model's constructor arguments (num_classes, dtype, ...).

  Returns:
    The NNX module; call it as the Linen model's `apply` without variables.
  """
  return bridge.ToNNX(models.get_model(name, **kwargs), rngs=rngs).lazy_init(*sample_args)


def variables(model: nnx.Module) -> dict[str, Any]:
  """The module's variables in Linen's layout, `{'params': ..., 'batch_stats': ...}`."""
  out = {}
  for collection, variable_type in _COLLECTIONS.items():
    tree = nnx.to_pure_dict(nnx.state(model, variable_type))
    if tree:
      out[collection] = tree
  return out


def load_variables(model: nnx.Module, linen_variables: Mapping[str, Any]) -> None:
  """Sets the module's variables from Linen's `{'params': ..., 'batch_stats': ...}`.

  Raises:
    ValueError: a collection other than params and batch_stats.
  """
  unknown = set(linen_variables) - set(_COLLECTIONS)
  if unknown:
    raise ValueError(f"Only params and batch_stats can be loaded, got {sorted(unknown)}.")
  for collection, tree in linen_variables.items():
    state = nnx.state(model, _COLLECTIONS[collection])
    nnx.replace_by_pure_dict(state, tree)
    nnx.update(model, state)
