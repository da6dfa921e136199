"""sharding.device_batches: host batches become global device arrays in order, a fixed number
transferred ahead of the one in use."""

import numpy as np

from dsop_jax.training import sharding


def test_device_batches_keep_the_order_and_read_a_fixed_number_ahead():
  mesh = sharding.create_mesh()
  read = []

  def host_batches():
    for i in range(5):
      read.append(i)
      yield {'image': np.full((2, 4, 4, 3), i, np.uint8), 'label': np.array([i, i], np.int32)}

  batches = sharding.device_batches(host_batches(), mesh, ahead=2)
  first = next(batches)
  assert read == [0, 1, 2]  # The one in use and two more, already on their way to the devices.
  assert first['image'].dtype == np.uint8 and first['image'].sharding == sharding.data_sharded(mesh)
  rest = list(batches)
  assert [int(b['label'][0]) for b in [first] + rest] == [0, 1, 2, 3, 4]
  np.testing.assert_array_equal(np.asarray(rest[-1]['image']), 4)
