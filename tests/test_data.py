"""The data layer on the embedded datasets: TFDS loading, order, resuming, hosts, eval coverage.

The embedded `digits` and `pydoc_topics` build into a fresh data_dir once per
module (a few seconds), offline, through TFDS itself.
"""

import collections
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from pydoc_data.topics import topics as PYDOC_TOPICS

from configs import default
from resnet_ln import data
from resnet_ln.data import embedded
from resnet_ln.data import preprocess
from resnet_ln.data import sources
from resnet_ln.data import text
from resnet_ln.train import parallel

DIGITS_TRAIN, DIGITS_TEST = 1_442, 355


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def make_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update(dict(dataset="digits", data_dir=data_dir, image_size=None, seq_len=32,
                     augment=True, batch_size=64, eval_batch_size=64, seed=0))
  config.update(overrides)
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def flat_examples(batches):
  """[(image bytes, label)] of the real (unmasked) examples of image batches, in order."""
  examples = []
  for batch in batches:
    images = batch["image"].reshape(-1, *batch["image"].shape[-3:])
    labels = batch["label"].reshape(-1)
    mask = batch["mask"].reshape(-1) if "mask" in batch else np.ones(len(images))
    examples += [(x.tobytes(), int(y)) for x, y, m in zip(images, labels, mask) if m]
  return examples


def digits_split_examples(data_dir, split):
  """[(uint8 image bytes, label)] of a digits split as TFDS stores it."""
  ds = tfds.load("digits", split=split, data_dir=data_dir, shuffle_files=False)
  return [(x["image"].tobytes(), int(x["label"])) for x in tfds.as_numpy(ds)]


def unnormalize(images):
  """float32 normalised digits -> the uint8 pixels they came from."""
  (mean,), (std,) = preprocess.NORMALIZATION["digits"]
  return np.round((images * std + mean) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# The embedded datasets through TFDS.
# ----------------------------------------------------------------------------
def test_digits_load_offline_through_tfds_with_the_documented_split(data_dir):
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

  splits = tfds.load("digits", data_dir=data_dir)
  assert {name: int(ds.cardinality()) for name, ds in splits.items()} == {
      "train": DIGITS_TRAIN, "test": DIGITS_TEST}
  train, test = (digits_split_examples(data_dir, split) for split in ("train", "test"))
  # Together they are scikit-learn's digits, each exactly once.
  digits = load_digits()
  pixels = np.minimum(digits.images * 16, 255).astype(np.uint8)[..., None]
  everything = [(x.tobytes(), int(y)) for x, y in zip(pixels, digits.target)]
  assert collections.Counter(train + test) == collections.Counter(everything)
  # The test split is every 5th example of each class.
  is_test = embedded.digits_split(digits.target)
  assert collections.Counter(test) == collections.Counter(
      e for e, t in zip(everything, is_test) if t)
  per_class = collections.Counter(y for _, y in test)
  assert per_class == {c: int(np.sum(digits.target == c)) // 5 for c in range(10)}


def test_pydoc_topics_builder_splits_whole_topics_with_about_10_percent_held_out(data_dir):
  builder = tfds.builder("pydoc_topics", data_dir=data_dir)
  builder.download_and_prepare()
  assert set(builder.info.splits) == {"train", "validation"}
  texts = {}
  for split in ("train", "validation"):
    examples = tfds.as_numpy(builder.as_dataset(split=split))
    texts[split] = {x["topic"].decode(): x["text"].decode() for x in examples}
  train, validation = texts["train"], texts["validation"]
  assert not set(train) & set(validation)
  assert {**train, **validation} == PYDOC_TOPICS
  held_out = sum(map(len, validation.values())) / sum(map(len, PYDOC_TOPICS.values()))
  assert 0.05 < held_out <= 0.10
  assert set(validation) == embedded.pydoc_topics_split(PYDOC_TOPICS)


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7),
                    reason="the documented figures are CPython 3.11.7's topics")
def test_pydoc_topics_split_matches_its_documented_figures():
  validation = embedded.pydoc_topics_split(PYDOC_TOPICS)
  train = set(PYDOC_TOPICS) - validation
  assert (len(train), len(validation)) == (44, 35)
  assert sum(len(PYDOC_TOPICS[k]) for k in train) == 418_522
  assert sum(len(PYDOC_TOPICS[k]) for k in validation) == 46_448


def test_dataset_info_of_the_embedded_datasets(data_dir):
  info = data.get_dataset_info(make_config(data_dir))
  assert (info.task, info.num_classes, info.example_shape) == ("classification", 10, (8, 8, 1))
  assert (info.num_train, info.num_eval, info.eval_split) == (DIGITS_TRAIN, DIGITS_TEST, "test")
  assert data.get_dataset_info(make_config(data_dir, image_size=32)).example_shape == (32, 32, 1)
  info = data.get_dataset_info(make_config(data_dir, dataset="pydoc_topics", seq_len=64))
  builder = tfds.builder("pydoc_topics", data_dir=data_dir)
  num_bytes = len(text.load_bytes(builder, "train"))
  assert (info.task, info.num_classes, info.example_shape) == ("language_modeling", 256, (64,))
  assert info.num_train == (num_bytes - 1) // 64 and info.eval_split == "validation"


# ----------------------------------------------------------------------------
# Train order: seeded, and resumable.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["digits", "pydoc_topics"])
def test_same_seed_same_order_and_different_seed_different_order(data_dir, dataset):
  def first_batches(seed):
    config = make_config(data_dir, dataset=dataset, seed=seed)
    return take(data.create_train_iterator(config), 3)

  key = "image" if dataset == "digits" else "inputs"
  same = [b[key] for b in first_batches(0)], [b[key] for b in first_batches(0)]
  np.testing.assert_array_equal(*same)
  assert not np.array_equal(same[0], [b[key] for b in first_batches(1)])


@pytest.mark.parametrize("dataset,batch_size", [("digits", 128), ("pydoc_topics", 600)])
def test_resume_at_step_n_yields_the_fresh_iterators_batches_from_n_on(data_dir, dataset,
                                                                       batch_size):
  config = make_config(data_dir, dataset=dataset, batch_size=batch_size, seq_len=64)
  steps_per_epoch = data.get_dataset_info(config).num_train / batch_size
  # Batch 10 (pydoc_topics) or 11 (digits) holds the end of epoch 0 and the start of epoch 1.
  assert 10 < steps_per_epoch < 12
  fresh = take(data.create_train_iterator(config), 14)
  for start_step in (1, 10, 11, 12):
    resumed = take(data.create_train_iterator(config, start_step=start_step),
                   14 - start_step)
    for expected, got in zip(fresh[start_step:], resumed, strict=True):
      for key in expected:
        np.testing.assert_array_equal(expected[key], got[key], err_msg=f"{start_step} {key}")


def test_each_epoch_is_a_new_permutation_of_the_train_split(data_dir):
  # 1,442 = 7 batches of 206: batches 0-6 are epoch 0, 7-13 epoch 1.
  config = make_config(data_dir, batch_size=206, augment=False)
  batches = take(data.create_train_iterator(config), 14)
  for batch in batches:
    batch["image"] = unnormalize(batch["image"])
  epochs = [flat_examples(batches[:7]), flat_examples(batches[7:])]
  train = collections.Counter(digits_split_examples(data_dir, "train"))
  for epoch in epochs:
    assert collections.Counter(epoch) == train
  assert [y for _, y in epochs[0]] != [y for _, y in epochs[1]]


# ----------------------------------------------------------------------------
# Eval: every example exactly once.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("num_devices", [1, 8])
def test_eval_visits_every_test_example_once_with_padding_masked(data_dir, num_devices):
  config = make_config(data_dir, eval_batch_size=64)
  placement = parallel.PmapParallelism(jax.devices()[:num_devices])
  batches = [jax.device_get(placement.put_batch(b)) for b in data.create_eval_iterator(config)]
  assert len(batches) == -(-DIGITS_TEST // 64)
  assert all(b["mask"].shape == (num_devices, 64 // num_devices) for b in batches)
  masks = np.concatenate([b["mask"].reshape(-1) for b in batches])
  assert masks.sum() == DIGITS_TEST
  np.testing.assert_array_equal(masks, np.arange(len(masks)) < DIGITS_TEST)  # Padding last.
  for batch in batches:
    batch["image"] = unnormalize(batch["image"])
  assert collections.Counter(flat_examples(batches)) == \
      collections.Counter(digits_split_examples(data_dir, "test"))


def test_text_eval_visits_every_validation_window_once(data_dir):
  config = make_config(data_dir, dataset="pydoc_topics", seq_len=64, eval_batch_size=256)
  info = data.get_dataset_info(config)
  batches = list(data.create_eval_iterator(config))
  assert sum(b["mask"].sum() for b in batches) == info.num_eval
  validation = text.load_bytes(tfds.builder("pydoc_topics", data_dir=data_dir), "validation")
  windows = np.concatenate([
      np.concatenate([b["inputs"], b["targets"][..., -1:]], -1).reshape(-1, 65)[
          b["mask"].reshape(-1) > 0] for b in batches])
  expected = np.stack([validation[i * 64:i * 64 + 65] for i in range(info.num_eval)])
  np.testing.assert_array_equal(windows, expected)


def test_two_processes_read_disjoint_parts_that_cover_each_split(data_dir, processes):
  # Global batches of 206 are 103 per process; 7 batches are one epoch of a part.
  config = make_config(data_dir, batch_size=206, eval_batch_size=64, augment=False)
  train, evaluation, num_batches = [], [], []
  processes.count = 2
  for index in (0, 1):
    processes.index = index
    batches = take(data.create_train_iterator(config), 7)
    assert batches[0]["image"].shape == (103, 8, 8, 1)
    for batch in batches:
      batch["image"] = unnormalize(batch["image"])
    train += flat_examples(batches)
    batches = list(data.create_eval_iterator(config))
    assert batches[0]["image"].shape == (32, 8, 8, 1)
    for batch in batches:
      batch["image"] = unnormalize(batch["image"])
    num_batches.append(len(batches))
    evaluation += flat_examples(batches)
  assert num_batches[0] == num_batches[1]  # Lined-up collectives in a multi-host eval.
  for examples, split in ((train, "train"), (evaluation, "test")):
    assert collections.Counter(examples) == \
        collections.Counter(digits_split_examples(data_dir, split))


def test_two_processes_split_the_text_windows_in_two(data_dir, processes):
  config = make_config(data_dir, dataset="pydoc_topics", seq_len=64, eval_batch_size=128)

  def windows(count):
    processes.count, real = count, []
    for processes.index in range(count):
      for batch in data.create_eval_iterator(config):
        real.append(batch["inputs"][batch["mask"] > 0])
    return np.concatenate(real)

  np.testing.assert_array_equal(windows(2), windows(1))


# ----------------------------------------------------------------------------
# What a batch holds.
# ----------------------------------------------------------------------------
def test_text_windows_are_byte_strings_of_the_text_with_targets_shifted_by_one(data_dir):
  config = make_config(data_dir, dataset="pydoc_topics", seq_len=48, batch_size=64)
  batch = next(data.create_train_iterator(config))
  inputs, targets = batch["inputs"], batch["targets"]
  assert inputs.shape == targets.shape == (64, 48)
  assert inputs.dtype == targets.dtype == np.int32
  assert inputs.min() >= 0 and inputs.max() < text.VOCAB_SIZE == 256
  np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
  train = text.load_bytes(tfds.builder("pydoc_topics", data_dir=data_dir), "train")
  windows = {train[i:i + 49].tobytes() for i in range(0, len(train) - 48, 48)}
  for x, y in zip(inputs, targets):
    assert np.concatenate([x, y[-1:]]).astype(np.uint8).tobytes() in windows


def test_digits_upscaled_to_32_pixels_are_normalised_and_augmented(data_dir):
  config = make_config(data_dir, image_size=32, batch_size=32)
  batch = next(data.create_train_iterator(config))
  (mean,), (std,) = preprocess.NORMALIZATION["digits"]
  assert batch["image"].shape == (32, 32, 32, 1) and batch["image"].dtype == np.float32
  assert batch["image"].min() >= -mean / std - 1e-5
  assert batch["image"].max() <= (1 - mean) / std + 1e-5
  evaluation = next(data.create_eval_iterator(config))
  assert evaluation["image"].shape == (64, 32, 32, 1)
  assert not np.array_equal(
      batch["image"],
      next(data.create_train_iterator(make_config(data_dir, image_size=32, batch_size=32,
                                                  augment=False)))["image"])


def test_a_dataset_that_another_process_prepares_meanwhile_is_read(tmp_path, monkeypatch):
  original = embedded.Digits._download_and_prepare  # pylint: disable=protected-access

  def lose_the_race(self, *args, **kwargs):
    # Another process (a second host, a test worker) prepares the same data_dir
    # and renames its directory into place before this one can.
    monkeypatch.setattr(embedded.Digits, "_download_and_prepare", original)
    tfds.builder("digits", data_dir=str(tmp_path)).download_and_prepare()
    return original(self, *args, **kwargs)

  monkeypatch.setattr(embedded.Digits, "_download_and_prepare", lose_the_race)
  info = data.get_dataset_info(make_config(str(tmp_path)))
  assert (info.num_train, info.num_eval) == (DIGITS_TRAIN, DIGITS_TEST)


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------
def test_an_unknown_dataset_name_lists_the_close_names(data_dir):
  with pytest.raises(ValueError, match=r"Unknown dataset 'digitz'.*did you mean.*'digits'"):
    data.get_dataset_info(make_config(data_dir, dataset="digitz"))
  with pytest.raises(ValueError, match=r"'cifar10'"):
    data.create_train_iterator(make_config(data_dir, dataset="cifar_10"))


def test_imagenet_without_its_files_says_where_to_put_them(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    data.get_dataset_info(make_config(str(tmp_path), dataset="imagenet2012"))
  assert f"{tmp_path}/downloads/manual/" in str(error.value)
  assert "ILSVRC2012_img_train.tar" in str(error.value)


def test_a_download_without_a_network_fails_at_once_and_says_what_to_do(tmp_path, monkeypatch):
  for variable in sources._PROXY_VARIABLES:  # pylint: disable=protected-access
    monkeypatch.delenv(variable, raising=False)

  def no_network(*args, **kwargs):
    raise OSError("Network is unreachable")

  monkeypatch.setattr(sources.socket, "create_connection", no_network)
  with pytest.raises(FileNotFoundError, match=r"mnist is not prepared .* needs a network.*"
                     r"tfds build mnist"):
    data.get_dataset_info(make_config(str(tmp_path), dataset="mnist"))
