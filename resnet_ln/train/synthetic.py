"""Random batches generated on the devices, for benchmarks that must measure the model."""

import functools

import jax
import jax.numpy as jnp

from resnet_ln.data.info import DatasetInfo
from resnet_ln.train.parallel import Parallelism


def synthetic_batch(info: DatasetInfo, batch_size: int, parallel: Parallelism, *,
                    seed: int = 0, mask: bool = False) -> dict[str, jax.Array]:
  """A global train batch of random data with `info`'s shapes, made on the devices.

  Classification: {'image': float32 standard normal [..., *example_shape],
  'label': int32 uniform in [0, num_classes)}; language modelling:
  {'inputs', 'targets': int32 bytes [..., seq_len]}, targets shifted by one.
  [...] is `parallel`'s layout of `batch_size` examples (`Parallelism.batch_layout`).
  One jitted jax.random call makes it where it lives: no host work, no transfer.

  Args:
    info: the dataset's shapes (any DatasetInfo, e.g. of 'synthetic_image').
    batch_size: examples over all devices (the global batch).
    parallel: where the batch lives, and its layout.
    seed: the random seed.
    mask: add eval's `mask` of ones (every example real).

  Raises:
    ValueError: batch_size does not split evenly over the devices.
  """
  leading, sharding = parallel.batch_layout(batch_size)
  generate = _generator(info.task, tuple(info.example_shape), info.num_classes, leading,
                        sharding, mask)
  return generate(jax.random.key(seed))


@functools.lru_cache(maxsize=None)
def _generator(task: str, example_shape: tuple[int, ...], num_classes: int,
               leading: tuple[int, ...], sharding: jax.sharding.Sharding, mask: bool):
  """A jitted key -> batch function (cached: one compilation per shape and sharding)."""

  def generate(key: jax.Array) -> dict[str, jax.Array]:
    data_key, label_key = jax.random.split(key)
    if task == "classification":
      batch = {"image": jax.random.normal(data_key, leading + example_shape, jnp.float32),
               "label": jax.random.randint(label_key, leading, 0, num_classes, jnp.int32)}
    else:
      tokens = jax.random.randint(data_key, leading + (example_shape[0] + 1,), 0, num_classes,
                                  jnp.int32)
      batch = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:]}
    if mask:
      batch["mask"] = jnp.ones(leading, jnp.float32)
    return batch

  return jax.jit(generate, out_shardings=sharding)
