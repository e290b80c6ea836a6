"""Device placement (`resnet_ln.train.parallel`): batch layouts, prefetching, synthetic batches.

The input pipeline yields host batches [process_batch, ...]; the Parallelism
object alone lays them out for pmap ([devices, per_device, ...]) or for the
mesh (global arrays sharded over the batch axis).
"""

import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default
from resnet_ln import data
from resnet_ln.train import parallel
from resnet_ln.train.synthetic import synthetic_batch


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def make_config(data_dir, **overrides):
  config = default.get_config()
  config.update(dict(dataset="digits", data_dir=data_dir, batch_size=64, eval_batch_size=64))
  config.update(overrides)
  return config


# ----------------------------------------------------------------------------
# Layouts.
# ----------------------------------------------------------------------------
def test_pmap_layout_is_the_global_batch_split_over_devices(data_dir):
  config = make_config(data_dir, batch_size=64)
  host_batch = next(data.create_train_iterator(config))
  pmap_batch = jax.device_get(parallel.PmapParallelism(jax.devices()).put_batch(host_batch))
  global_batch = jax.device_get(
      parallel.ShardMapParallelism(jax.devices()).put_batch(host_batch))
  assert pmap_batch["image"].shape == (8, 8, 8, 8, 1) and pmap_batch["image"].dtype == np.float32
  assert pmap_batch["label"].shape == (8, 8) and pmap_batch["label"].dtype == np.int32
  assert global_batch["image"].shape == (64, 8, 8, 1)
  for key in ("image", "label"):
    np.testing.assert_array_equal(pmap_batch[key].reshape(global_batch[key].shape),
                                  global_batch[key])
  eval_batch = parallel.PmapParallelism(jax.devices()[:4]).put_batch(
      next(data.create_eval_iterator(config)))
  assert eval_batch["mask"].shape == (4, 16) and eval_batch["mask"].dtype == np.float32


def test_a_batch_that_does_not_divide_over_the_devices_is_a_clear_error():
  with pytest.raises(ValueError, match=r"batch_size=60 is not divisible by the device count 8"):
    parallel.create_parallelism("pmap").check_batch_size(60, "batch_size")
  with pytest.raises(ValueError, match=r"eval_batch_size=60 .* device count 8"):
    parallel.create_parallelism("shard_map").check_batch_size(60, "eval_batch_size")
  with pytest.raises(ValueError, match="parallelism='sharded'"):
    parallel.create_parallelism("sharded")


def test_synthetic_iterators_pad_and_mask_the_eval_split():
  config = make_config(None, dataset="synthetic_image", image_size=8, num_classes=10,
                       eval_batch_size=4096)
  info = data.get_dataset_info(config)
  assert info.example_shape == (8, 8, 3) and info.num_eval == 50_000
  placement = parallel.PmapParallelism(jax.devices())
  batches = [placement.put_batch(b) for b in data.create_eval_iterator(config)]
  assert len(batches) == 13 and batches[0]["image"].shape == (8, 512, 8, 8, 3)
  assert sum(b["mask"].sum() for b in batches) == 50_000


# ----------------------------------------------------------------------------
# Synthetic data and device placement (no TensorFlow).
# ----------------------------------------------------------------------------
def test_synthetic_batch_has_the_shapes_and_placement_asked_for():
  info = data.DatasetInfo("synthetic_image", "classification", 10, (8, 8, 3), 100, 10,
                          "train", "validation")
  devices = jax.devices()[:4][::-1]
  batch = synthetic_batch(info, 16, parallel.PmapParallelism(devices))
  assert batch["image"].shape == (4, 4, 8, 8, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (4, 4) and batch["label"].dtype == np.int32
  assert 0 <= int(batch["label"].min()) and int(batch["label"].max()) < 10
  for shard in batch["image"].addressable_shards:
    assert shard.device == devices[shard.index[0].start]
  mesh_parallel = parallel.ShardMapParallelism(jax.devices())
  lm = data.DatasetInfo("synthetic_text", "language_modeling", 256, (12,), 100, 10,
                        "train", "validation")
  batch = synthetic_batch(lm, 16, mesh_parallel, seed=3)
  assert batch["inputs"].shape == batch["targets"].shape == (16, 12)
  assert batch["inputs"].dtype == np.int32
  assert batch["inputs"].sharding == mesh_parallel.batch_sharding
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  with pytest.raises(ValueError, match="batch_size=10"):
    synthetic_batch(info, 10, parallel.PmapParallelism(devices))


def test_prefetch_places_each_shard_on_its_device():
  devices = jax.devices()[2:6][::-1]
  host = [{"x": np.full((8, 3), i, np.float32), "y": np.arange(8) + i} for i in range(5)]
  placed = list(parallel.PmapParallelism(devices).prefetch(iter(host), 2))
  assert len(placed) == 5
  for i, batch in enumerate(placed):
    assert batch["x"].shape == (4, 2, 3)
    np.testing.assert_array_equal(batch["y"], host[i]["y"].reshape(4, 2))
    for shard in batch["x"].addressable_shards:
      assert shard.device == devices[shard.index[0].start]
      np.testing.assert_array_equal(shard.data, host[i]["x"].reshape(4, 2, 3)[shard.index])
  mesh_parallel = parallel.ShardMapParallelism(jax.devices())
  host = [{"x": np.arange(16.0) + i} for i in range(3)]
  placed = list(mesh_parallel.prefetch(iter(host), 2))
  assert [b["x"].sharding for b in placed] == [mesh_parallel.batch_sharding] * 3
  np.testing.assert_array_equal(placed[2]["x"], host[2]["x"])


def test_importing_the_data_package_and_synthetic_data_do_not_import_tensorflow():
  script = (
      "import sys, jax, ml_collections; from resnet_ln import data; "
      "from resnet_ln.train import parallel, synthetic; "
      "info = data.get_dataset_info(ml_collections.ConfigDict("
      "{'dataset': 'synthetic_text', 'seq_len': 8})); "
      "synthetic.synthetic_batch(info, 2, parallel.PmapParallelism(jax.devices()[:1])); "
      "assert not {'tensorflow', 'tensorflow_datasets'} & set(sys.modules), 'TF was imported'")
  subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
