"""Data parallelism: one per-device step function, wrapped by `jax.pmap` or by
`jax.jit` over `jax.shard_map` on a device mesh.

Both give each device `global_batch / num_devices` examples and the same named
axis ("batch") for `pmean`/`psum` and synchronised BatchNorm, so they compute the
same numbers; they differ only in how arrays are laid out:

- pmap: the state is replicated with a leading device axis, batches are
  `[local_devices, per_device_batch, ...]`.
- shard_map: the state is a replicated global `jax.Array`, batches are global
  `[global_batch, ...]` arrays sharded over the mesh axis.
"""

from typing import Any, Callable

import flax.jax_utils
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"
PARALLELISMS = ("pmap", "shard_map")


class Parallelism:
  """How arrays are placed and how a per-device function is run on all devices."""

  layout: str  # the data pipeline's batch layout
  batch_sharding: Any  # for `resnet_ln.data.prefetch_to_device`
  devices: list[jax.Device]  # this process's devices

  def train_fn(self, fn: Callable) -> Callable:
    raise NotImplementedError

  def eval_fn(self, fn: Callable) -> Callable:
    raise NotImplementedError

  def put_state(self, host_state: Any) -> Any:
    """Places a host (NumPy) state, identical on every process, on all devices."""
    raise NotImplementedError

  def get_state(self, state: Any) -> Any:
    """One copy of the state as NumPy arrays, on every process."""
    raise NotImplementedError

  def unreplicate_metrics(self, metrics: Any) -> Any:
    return metrics


class PmapParallelism(Parallelism):
  """`jax.pmap` over this process's devices (and every other process's, multi-host)."""

  layout = "pmap"
  batch_sharding = None

  def __init__(self, devices: list[jax.Device]):
    self.devices = devices

  def train_fn(self, fn: Callable) -> Callable:
    return jax.pmap(fn, axis_name=AXIS, devices=self._all_devices(), donate_argnums=(0,))

  def eval_fn(self, fn: Callable) -> Callable:
    return jax.pmap(fn, axis_name=AXIS, devices=self._all_devices())

  def _all_devices(self) -> list[jax.Device]:
    # pmap over a device subset needs the subset named on every process.
    return None if self.devices == jax.local_devices() else self.devices

  def put_state(self, host_state: Any) -> Any:
    return flax.jax_utils.replicate(host_state, self.devices)

  def get_state(self, state: Any) -> Any:
    # Device 0's replica only: fetching x[0] would copy every replica to the host.
    return jax.device_get(jax.tree.map(
        lambda x: x.addressable_shards[0].data.reshape(x.shape[1:]), state))

  def unreplicate_metrics(self, metrics: Any) -> Any:
    return jax.tree.map(lambda x: x[0], metrics)


class ShardMapParallelism(Parallelism):
  """`jax.jit` of a `jax.shard_map` over a one-axis mesh of all devices."""

  layout = "global"

  def __init__(self, devices: list[jax.Device]):
    self.devices = [d for d in devices if d.process_index == jax.process_index()]
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


def create_parallelism(name: str, num_devices: int = 0) -> Parallelism:
  """The wrapper `name` over all devices, or the first `num_devices` (one process only).

  Raises:
    ValueError: an unknown name, or more devices asked for than there are.
  """
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
    local = [d for d in devices if d.process_index == jax.process_index()]
    return PmapParallelism(local)
  if name == "shard_map":
    return ShardMapParallelism(devices)
  raise ValueError(f"config.parallelism={name!r} is not one of {PARALLELISMS}.")
