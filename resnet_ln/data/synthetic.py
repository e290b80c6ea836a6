"""Random batches generated on the devices, for benchmarks that must measure the model."""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from resnet_ln.data.info import DatasetInfo
from resnet_ln.data.prefetch import pmap_sharding


def synthetic_batch(info: DatasetInfo, batch_size: int, *,
                    sharding: jax.sharding.Sharding | None = None,
                    devices: Sequence[jax.Device] | None = None,
                    seed: int = 0) -> dict[str, jax.Array]:
  """A train batch of random data with `info`'s shapes, made on the devices.

  Classification: {'image': float32 standard normal [..., *example_shape],
  'label': int32 uniform in [0, num_classes)}; language modelling:
  {'inputs', 'targets': int32 bytes [..., seq_len]}, targets shifted by one.
  One jitted jax.random call makes it where it lives: no host work, no transfer.

  Args:
    info: the dataset's shapes (any DatasetInfo, e.g. of 'synthetic_image').
    batch_size: examples over all the placed devices: the global batch with a
      `sharding`, the batch over `devices` in the pmap layout.
    sharding: the global batch's sharding (leading axis = batch); None for the
      pmap layout [len(devices), batch_size // len(devices), ...].
    devices: the pmap layout's devices (default: jax.local_devices()).
    seed: the random seed.

  Raises:
    ValueError: batch_size does not split evenly over the pmap devices.
  """
  if sharding is None:
    devices = tuple(devices or jax.local_devices())
    if batch_size % len(devices):
      raise ValueError(f"batch_size={batch_size} does not split over {len(devices)} devices.")
    leading, sharding = (len(devices), batch_size // len(devices)), pmap_sharding(devices)
  else:
    leading = (batch_size,)
  generate = _generator(info.task, tuple(info.example_shape), info.num_classes, leading,
                        sharding)
  return generate(jax.random.key(seed))


@functools.lru_cache(maxsize=None)
def _generator(task: str, example_shape: tuple, num_classes: int, leading: tuple,
               sharding: jax.sharding.Sharding):
  """A jitted key -> batch function (cached: one compilation per shape and sharding)."""

  def generate(key: jax.Array) -> dict[str, jax.Array]:
    data_key, label_key = jax.random.split(key)
    if task == "classification":
      return {"image": jax.random.normal(data_key, leading + example_shape, jnp.float32),
              "label": jax.random.randint(label_key, leading, 0, num_classes, jnp.int32)}
    tokens = jax.random.randint(data_key, leading + (example_shape[0] + 1,), 0, num_classes,
                                jnp.int32)
    return {"inputs": tokens[..., :-1], "targets": tokens[..., 1:]}

  return jax.jit(generate, out_shardings=sharding)
