"""Augmentations on generated images, and the big datasets' code paths on `tfds.testing.mock_data`.

No network and no real ImageNet/CIFAR files: mock_data replaces what TFDS would
read with random examples of the dataset's real features.
"""

import itertools

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from resnet_ln import data
from resnet_ln.data import preprocess
from resnet_ln.data import text
from resnet_ln.data.cpu_tensorflow import tf
from resnet_ln.train import parallel


def jpeg(pixels: np.ndarray) -> tf.Tensor:
  return tf.io.encode_jpeg(pixels, quality=95)


def seed(i: int) -> tf.Tensor:
  return tf.constant([7, i], tf.int64)


def make_config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update(dict(dataset="cifar10", data_dir=None, image_size=None, seq_len=8,
                     augment=True, batch_size=16, eval_batch_size=16, seed=0))
  config.update(overrides)
  return config


def normalised_range(name):
  mean, std = (np.array(v) for v in preprocess.normalization(name))
  return -mean / std, (1 - mean) / std


# ----------------------------------------------------------------------------
# Augmentations.
# ----------------------------------------------------------------------------
def test_imagenet_train_crops_flips_and_resizes_to_224():
  # A horizontal ramp, dark on the left: every crop keeps the ramp, a flip reverses it.
  ramp = np.broadcast_to(np.linspace(0, 255, 400)[None, :, None], (350, 400, 3))
  image = jpeg(ramp.astype(np.uint8))
  outputs = [preprocess.imagenet_train(image, seed(i), 224).numpy() for i in range(24)]
  assert all(x.shape == (224, 224, 3) and x.dtype == np.uint8 for x in outputs)
  directions = {np.sign(x[:, -8:].mean() - x[:, :8].mean()) for x in outputs}
  assert directions == {-1.0, 1.0}
  # Random crops: their ramps span different ranges of the original.
  spans = {(int(x[:, :, 0].min()) // 8, int(x[:, :, 0].max()) // 8) for x in outputs}
  assert len(spans) > 12
  np.testing.assert_array_equal(preprocess.imagenet_train(image, seed(3), 224), outputs[3])
  assert preprocess.imagenet_train(image, seed(3), 128).shape == (128, 128, 3)


@pytest.mark.parametrize("image_size", [224, 160])
def test_imagenet_eval_takes_the_central_224_of_256_of_the_shorter_side(image_size):
  # 512x256: the shorter side resized to 256 is a no-op, so the eval crop is the
  # central 224x224 window at (144, 16). Green inside it, red outside.
  pixels = np.zeros((512, 256, 3), np.uint8)
  pixels[..., 0] = 255
  pixels[144:368, 16:240] = (0, 255, 0)
  output = preprocess.imagenet_eval(jpeg(pixels), image_size).numpy()
  assert output.shape == (image_size, image_size, 3) and output.dtype == np.uint8
  inside = output[6:-6, 6:-6].reshape(-1, 3).astype(int)
  assert inside[:, 0].max() < 40 and inside[:, 1].min() > 215


def test_cifar_train_pads_4_crops_32_and_flips():
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  padded = np.pad(image, [(4, 4), (4, 4), (0, 0)])
  shifts, flips = set(), set()
  for i in range(32):
    output = preprocess.pad_and_crop(tf.constant(image), seed(i), 4, flip=True).numpy()
    (match,) = [(dy, dx, flip) for dy, dx, flip in itertools.product(range(9), range(9), (0, 1))
                if np.array_equal(output, padded[dy:dy + 32, dx:dx + 32][:, ::-1 if flip else 1])]
    shifts.add(match[:2])
    flips.add(match[2])
  assert len(shifts) > 15 and flips == {0, 1}


def test_small_images_are_upscaled_and_only_train_is_shifted():
  digit = np.zeros((8, 8, 1), np.uint8)
  digit[2:6, 3:5] = 255
  encoded = tf.io.encode_png(digit)
  kwargs = dict(image_shape=(8, 8, 1), image_size=32)
  plain = preprocess.preprocess_image("digits", encoded, None, augment=False, **kwargs).numpy()
  assert plain.shape == (32, 32, 1) and plain.dtype == np.uint8
  np.testing.assert_array_equal(plain[:4], 0)  # Upscaled, not shifted: the border stays black.
  assert plain[12:20, 14:18].min() == 255
  shifted = [preprocess.preprocess_image("digits", encoded, seed(i), augment=True,
                                         **kwargs).numpy() for i in range(8)]
  assert all(x.shape == (32, 32, 1) for x in shifted)
  assert any(not np.array_equal(x, plain) for x in shifted)


def test_normalize_maps_0_and_255_to_the_per_channel_bounds():
  mean, std = preprocess.normalization("imagenet2012")
  pixels = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
  low, high = preprocess.normalize(tf.constant(pixels), mean, std).numpy()[0]
  np.testing.assert_allclose(low, normalised_range("imagenet2012")[0], rtol=1e-5)
  np.testing.assert_allclose(high, normalised_range("imagenet2012")[1], rtol=1e-5)


# ----------------------------------------------------------------------------
# The big datasets' code paths, on mock data.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("dataset,image_size,shape", [
    ("imagenet2012", None, (224, 224, 3)),
    ("imagenet2012", 96, (96, 96, 3)),
    ("cifar10", None, (32, 32, 3)),
])
def test_image_datasets_on_mock_data(dataset, image_size, shape):
  config = make_config(dataset=dataset, image_size=image_size, batch_size=16,
                       eval_batch_size=8)
  with tfds.testing.mock_data(num_examples=12):
    info = data.get_dataset_info(config)
    assert info.example_shape == shape
    assert info.num_classes == (1000 if dataset == "imagenet2012" else 10)
    batch = jax.device_get(parallel.PmapParallelism(jax.devices()).put_batch(
        next(data.create_train_iterator(config))))
    placement = parallel.PmapParallelism(jax.devices()[:4])
    evaluation = [jax.device_get(placement.put_batch(b)) for b in data.create_eval_iterator(config)]
  assert batch["image"].shape == (8, 2, *shape) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8, 2) and batch["label"].dtype == np.int32
  assert 0 <= batch["label"].min() and batch["label"].max() < info.num_classes
  low, high = normalised_range(dataset)
  assert np.all(batch["image"].min(axis=(0, 1, 2, 3)) >= low - 1e-5)
  assert np.all(batch["image"].max(axis=(0, 1, 2, 3)) <= high + 1e-5)
  assert len(evaluation) == 2 and evaluation[0]["image"].shape == (4, 2, *shape)
  assert sum(b["mask"].sum() for b in evaluation) == info.num_eval == 12


def test_tiny_shakespeare_on_mock_data():
  config = make_config(dataset="tiny_shakespeare", seq_len=4, batch_size=8, eval_batch_size=8)
  with tfds.testing.mock_data(num_examples=3):
    info = data.get_dataset_info(config)
    builder = tfds.builder("tiny_shakespeare")
    num_bytes = len(text.load_bytes(builder, "train"))
    batch = next(data.create_train_iterator(config))
    evaluation = list(data.create_eval_iterator(config))
  assert (info.task, info.num_classes, info.example_shape) == ("language_modeling", 256, (4,))
  assert info.num_train == (num_bytes - 1) // 4 > 0
  assert batch["inputs"].shape == batch["targets"].shape == (8, 4)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  assert sum(b["mask"].sum() for b in evaluation) == info.num_eval


def test_a_dataset_without_image_label_or_text_features_is_a_clear_error():
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError, match=r"'wine_quality' has features \['features', "
                       r"'quality'\].*needs `image` with a ClassLabel `label`.*or `text`"):
      data.get_dataset_info(make_config(dataset="wine_quality"))
