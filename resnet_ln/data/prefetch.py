"""Moving host batches to the devices ahead of the step that needs them."""

import collections
import itertools
from typing import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def pmap_sharding(devices: Sequence[jax.Device]) -> NamedSharding:
  """Leading axis i on devices[i]: the pmap layout (`jax.device_put_sharded`'s replacement)."""
  return NamedSharding(Mesh(np.asarray(devices), ("devices",)), PartitionSpec("devices"))


def prefetch_to_device(iterator: Iterator[dict[str, np.ndarray]], size: int = 2,
                       sharding: jax.sharding.Sharding | None = None,
                       devices: Sequence[jax.Device] | None = None,
                       ) -> Iterator[dict[str, jax.Array]]:
  """Yields the batches of `iterator` as device arrays, `size` transfers ahead.

  Transfers are asynchronous, so while the device runs step t the batches of
  steps t + 1 .. t + size are already on their way (double buffering for
  size=2); more rarely helps and costs device memory.

  Args:
    iterator: host batches: [num_devices, per_device_batch, ...] arrays when
      `sharding` is None (pmap layout), else this process's [process_batch, ...]
      part of the global batch.
    size: how many batches to keep in flight.
    sharding: None for the pmap layout; otherwise the global batch's sharding
      (a NamedSharding), assembled with `jax.make_array_from_process_local_data`.
    devices: the pmap layout's devices (default: jax.local_devices()); ignored
      with a `sharding`.
  """
  if sharding is None:
    target = pmap_sharding(devices or jax.local_devices())
    put = lambda x: jax.device_put(x, target)
  else:
    put = lambda x: jax.make_array_from_process_local_data(sharding, x)
  queue = collections.deque()

  def enqueue(n: int) -> None:
    for batch in itertools.islice(iterator, n):
      queue.append(jax.tree.map(put, batch))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
