"""The one place that knows about devices: a data-parallel mesh and how batches and state are placed.

Parameters and optimiser state are replicated; batches are split along the 'data' axis over every
device of every process. Under `jax.jit`, BatchNorm's batch mean and variance are then taken over the
global batch (XLA inserts the all-reduce), and gradients are averaged over all devices.
"""

import collections
from typing import Any, Iterable, Iterator, Mapping

import jax
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = 'data'


def create_mesh() -> Mesh:
  """The mesh over all devices of all processes, with one axis, DATA_AXIS (`jax.make_mesh`, which
  orders the devices for fast collectives; a model axis can be added beside it). The axis is of
  type Auto, as in a plain `Mesh`: inside jit XLA propagates the shardings of the inputs
  (make_mesh's default, Explicit, would put the shardings into the types of every operation)."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, field: str = 'train.batch_size') -> int:
  """This process's share of a global batch; raises ValueError naming `field` if it does not split."""
  devices = jax.device_count()
  if global_batch_size < 1 or global_batch_size % devices:
    raise ValueError(f'config.{field} = {global_batch_size} is invalid: must be a positive multiple '
                     f'of the number of devices ({devices}).')
  return global_batch_size // jax.process_count()


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> Any:
  """Process-local numpy batch -> global jax.Arrays split over the 'data' axis."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def device_batches(batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, ahead: int = 2
                   ) -> Iterator[Any]:
  """`shard_batch` of each host batch, `ahead` batches transferred to the devices before the one
  in use is given out (transfers are asynchronous, so they overlap the steps running). The host
  iterator is read `ahead` batches early; a resumed run starts its own at its step."""
  queue: collections.deque = collections.deque()
  for batch in batches:
    queue.append(shard_batch(batch, mesh))
    if len(queue) > ahead:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
