"""Data parallelism and device placement: the one place that knows the devices.

One per-device step function, wrapped by `jax.pmap` or by `jax.jit` over
`jax.shard_map` on a device mesh. Both give each device `global_batch /
num_devices` examples and the same named axis ("batch") for `pmean`/`psum` and
synchronised BatchNorm, so they compute the same numbers; they differ only in
how arrays are laid out on the devices:

- pmap: the state is replicated with a leading device axis, batches are
  `[local_devices, per_device_batch, ...]`.
- shard_map: the state is a replicated global `jax.Array`, batches are global
  `[global_batch, ...]` arrays sharded over the mesh axis.

The input pipeline yields this process's host batches `[process_batch, ...]`
(NumPy); `Parallelism.prefetch` turns them into device arrays in the layout
its step functions take.
"""

import collections
import itertools
from typing import Any, Callable, Iterator

import flax.jax_utils
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"
PARALLELISMS = ("pmap", "shard_map")


class Parallelism:
  """How arrays are placed and how a per-device function is run on all devices.

  Attributes:
    name: 'pmap' or 'shard_map'.
    devices: this process's devices.
    num_devices: the devices of all processes together.
  """

  name: str
  devices: list[jax.Device]
  num_devices: int

  def check_batch_size(self, batch_size: int, field: str = "batch_size") -> None:
    """Raises ValueError unless the global `batch_size` splits evenly over every device."""
    if batch_size % self.num_devices:
      raise ValueError(
          f"config.{field}={batch_size} is not divisible by the device count "
          f"{self.num_devices} ({jax.process_count()} process(es) x {len(self.devices)} "
          "devices): config.batch_size and config.eval_batch_size must both divide by the "
          "number of devices, so that every device gets the same number of examples.")

  def train_fn(self, fn: Callable) -> Callable:
    """`fn(state, batch) -> (state, metrics)` on every device; the state is donated."""
    raise NotImplementedError

  def eval_fn(self, fn: Callable) -> Callable:
    """`fn(state, batch) -> metrics` on every device."""
    raise NotImplementedError

  def put_state(self, host_state: Any) -> Any:
    """Places a host (NumPy) state, identical on every process, on all devices."""
    raise NotImplementedError

  def get_state(self, state: Any) -> Any:
    """One copy of the state as NumPy arrays, on every process."""
    raise NotImplementedError

  def put_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's host batch `[process_batch, ...]` as device arrays (asynchronously)."""
    raise NotImplementedError

  def unreplicate_metrics(self, metrics: Any) -> Any:
    """Fetched step metrics without the device axis (they are equal on every device)."""
    return metrics

  def num_params(self, params: Any) -> int:
    """The number of model parameters in a placed `params` tree (one copy)."""
    return sum(x.size for x in jax.tree.leaves(params))

  def prefetch(self, host_batches: Iterator[dict[str, np.ndarray]],
               size: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Yields `host_batches` placed on the devices, `size` transfers ahead.

    Transfers are asynchronous, so while the devices run step t the batches of
    steps t + 1 .. t + size are already on their way (double buffering for
    size=2); more rarely helps and costs device memory.
    """
    queue = collections.deque()

    def enqueue(n: int) -> None:
      for batch in itertools.islice(host_batches, n):
        queue.append(self.put_batch(batch))

    enqueue(size)
    while queue:
      yield queue.popleft()
      enqueue(1)

  def batch_layout(self, batch_size: int) -> tuple[tuple[int, ...], jax.sharding.Sharding]:
    """(leading shape, sharding) of a global batch of `batch_size` examples on the devices.

    For arrays made on the devices directly (e.g. `jax.jit(..., out_shardings=sharding)`),
    as the synthetic batches of `resnet_ln.train.synthetic` are.
    """
    raise NotImplementedError


class PmapParallelism(Parallelism):
  """`jax.pmap` over this process's devices (and every other process's, multi-host)."""

  name = "pmap"

  def __init__(self, devices: list[jax.Device]):
    self.devices = list(devices)
    self.num_devices = len(self.devices) * jax.process_count()
    # Leading axis i on devices[i]: the pmap layout (`jax.device_put_sharded`'s replacement).
    self.batch_sharding = NamedSharding(Mesh(np.asarray(self.devices), ("devices",)),
                                        P("devices"))

  def train_fn(self, fn: Callable) -> Callable:
    return jax.pmap(fn, axis_name=AXIS, devices=self._all_devices(), donate_argnums=(0,))

  def eval_fn(self, fn: Callable) -> Callable:
    return jax.pmap(fn, axis_name=AXIS, devices=self._all_devices())

  def _all_devices(self) -> list[jax.Device] | None:
    # pmap over a device subset needs the subset named on every process.
    return None if self.devices == jax.local_devices() else self.devices

  def put_state(self, host_state: Any) -> Any:
    return flax.jax_utils.replicate(host_state, self.devices)

  def get_state(self, state: Any) -> Any:
    # Device 0's replica only: fetching x[0] would copy every replica to the host.
    return jax.device_get(jax.tree.map(
        lambda x: x.addressable_shards[0].data.reshape(x.shape[1:]), state))

  def put_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    def put(x):
      x = np.asarray(x)
      return jax.device_put(x.reshape(len(self.devices), -1, *x.shape[1:]), self.batch_sharding)

    return jax.tree.map(put, host_batch)

  def unreplicate_metrics(self, metrics: Any) -> Any:
    return jax.tree.map(lambda x: x[0], metrics)

  def num_params(self, params: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(params)) // len(self.devices)

  def batch_layout(self, batch_size: int) -> tuple[tuple[int, ...], jax.sharding.Sharding]:
    self.check_batch_size(batch_size)
    return (len(self.devices), batch_size // self.num_devices), self.batch_sharding


class ShardMapParallelism(Parallelism):
  """`jax.jit` of a `jax.shard_map` over a one-axis mesh of all devices."""

  name = "shard_map"

  def __init__(self, devices: list[jax.Device]):
    self.devices = [d for d in devices if d.process_index == jax.process_index()]
    self.num_devices = len(devices)
    self.mesh = Mesh(np.asarray(devices), (AXIS,))
    self.batch_sharding = NamedSharding(self.mesh, P(AXIS))
    self.replicated = NamedSharding(self.mesh, P())

  def _shard_map(self, fn: Callable, out_specs: Any) -> Callable:
    # check_vma=False keeps pmap's semantics for the shared step function: with
    # it on, differentiating w.r.t. the replicated params already sums the
    # gradient over devices, and the step's own pmean would then be applied on
    # top of that sum.
    return jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=out_specs,
                         check_vma=False)

  def train_fn(self, fn: Callable) -> Callable:
    return jax.jit(self._shard_map(fn, (P(), P())), donate_argnums=(0,))

  def eval_fn(self, fn: Callable) -> Callable:
    return jax.jit(self._shard_map(fn, P()))

  def put_state(self, host_state: Any) -> Any:
    def put(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])

    return jax.tree.map(put, host_state)

  def get_state(self, state: Any) -> Any:
    return jax.device_get(state)

  def put_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x)),
        host_batch)

  def batch_layout(self, batch_size: int) -> tuple[tuple[int, ...], jax.sharding.Sharding]:
    self.check_batch_size(batch_size)
    return (batch_size,), self.batch_sharding


def create_parallelism(name: str, num_devices: int = 0) -> Parallelism:
  """The wrapper `name` over all devices, or the first `num_devices` (one process only).

  Raises:
    ValueError: an unknown name, or more devices asked for than there are.
  """
  if name not in PARALLELISMS:
    raise ValueError(f"config.parallelism={name!r} is not one of {PARALLELISMS}.")
  devices = jax.devices()
  if num_devices:
    if jax.process_count() > 1:
      raise ValueError("config.num_devices must be 0 (all devices) in a multi-process run.")
    if num_devices > len(devices):
      raise ValueError(
          f"config.num_devices={num_devices} but only {len(devices)} devices are available."
      )
    devices = devices[:num_devices]
  if name == "pmap":
    return PmapParallelism([d for d in devices if d.process_index == jax.process_index()])
  return ShardMapParallelism(devices)
