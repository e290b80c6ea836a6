"""`image_folder:PATH` on folders of files written here from scikit-learn's digits.

The module's folder holds every digit once, upscaled to 32x32, in the embedded
`digits` dataset's split (test/ is every 5th example of each class): mostly
RGB PNGs and JPEGs, plus a grayscale PNG, an RGBA PNG, a GIF and a BMP.
"""

import collections
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from configs import default
from resnet_ln import data
from resnet_ln import train
from resnet_ln.data import embedded
from resnet_ln.data import folders
from resnet_ln.train import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_TRAIN, DIGITS_TEST = 1_442, 355
CLASSES = tuple(f"digit_{d}" for d in range(10))
# A few files in other formats and modes: index -> (mode, extension).
SPECIAL = {0: ("L", "png"), 1: ("RGBA", "png"), 2: ("RGB", "gif"), 3: ("RGB", "bmp"),
           4: ("L", "jpg")}


def write_digits_folder(root) -> None:
  digits = load_digits()
  pixels = np.minimum(digits.images * 16, 255).astype(np.uint8)
  is_test = embedded.digits_split(digits.target)
  for index, (image, label, test) in enumerate(zip(pixels, digits.target, is_test)):
    folder = os.path.join(root, "test" if test else "train", CLASSES[label])
    os.makedirs(folder, exist_ok=True)
    mode, extension = SPECIAL.get(index, ("RGB", "jpg" if index % 3 == 0 else "png"))
    image = Image.fromarray(image).resize((32, 32), Image.BILINEAR).convert(mode)
    image.save(os.path.join(folder, f"{index:04d}.{extension}"), quality=95)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("digits_folder"))
  write_digits_folder(root)
  return root


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A data_dir for the embedded digits, which build into it once."""
  return str(tmp_path_factory.mktemp("tfds"))


def make_config(dataset, **overrides) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update(dict(dataset=dataset, image_size=32, batch_size=64, eval_batch_size=64,
                     seed=0))
  config.update(overrides)
  return config


def folder_config(root, **overrides) -> ml_collections.ConfigDict:
  return make_config(f"image_folder:{root}", **overrides)


def labelled_pixels(batches):
  """[(label, image bytes)] of the real (unmasked) examples of image batches."""
  examples = []
  for batch in batches:
    images = batch["image"].reshape(-1, *batch["image"].shape[-3:])
    labels = batch["label"].reshape(-1)
    mask = batch["mask"].reshape(-1) if "mask" in batch else np.ones(len(images))
    examples += [(int(y), x.tobytes()) for x, y, m in zip(images, labels, mask) if m]
  return examples


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def files_per_class(root, split):
  return {label: len(os.listdir(os.path.join(root, split, name)))
          for label, name in enumerate(CLASSES)}


def small_folder(root, splits=("train", "val"), classes=("cat", "dog"), images=2):
  """root/split/class/i.png for each split and class: 4x4 gray PNGs."""
  for split in splits:
    for name in classes:
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for i in range(images):
        Image.new("L", (4, 4), 40 * i).save(os.path.join(root, split, name, f"{i}.png"))
  return str(root)


def not_an_image(root):
  path = os.path.join(root, "train", "dog", "notes.jpg")
  with open(path, "w") as f:
    f.write("a text file, not a JPEG")
  return path


def remove(root, *paths):
  for path in paths:
    path = os.path.join(root, path)
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


# ----------------------------------------------------------------------------
# What the trainer is told, and what a batch holds.
# ----------------------------------------------------------------------------
def test_dataset_info_counts_the_files_and_names_the_classes(digits_folder):
  info = data.get_dataset_info(folder_config(digits_folder))
  assert (info.task, info.num_classes, info.example_shape) == ("classification", 10, (32, 32, 3))
  assert (info.num_train, info.num_eval) == (DIGITS_TRAIN, DIGITS_TEST)
  assert (info.train_split, info.eval_split) == ("train", "test")
  assert info.label_names == CLASSES
  assert data.get_dataset_info(folder_config(digits_folder, image_size=None)).example_shape == \
      (224, 224, 3)


def test_every_format_and_mode_becomes_normalised_rgb(tmp_path):
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    for index, (mode, extension) in enumerate([("L", "png"), ("RGBA", "png"), ("P", "gif"),
                                               ("RGB", "bmp"), ("L", "jpg"), ("RGB", "jpg")]):
      folder = tmp_path / split / f"class{index % 2}"
      folder.mkdir(parents=True, exist_ok=True)
      # Sizes that differ, none square: the recipes crop and resize each.
      size = (40 + 7 * index, 30 + 5 * index)
      image = Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).convert(mode)
      # The GIF is animated: its first frame is the image.
      extra = dict(save_all=True, append_images=[image.transpose(0)]) if extension == "gif" else {}
      image.save(folder / f"{index}.{extension}", **extra)
  for augment, image_size in (("imagenet", 48), ("cifar", 16), (True, None), (False, 24)):
    config = folder_config(tmp_path, image_size=image_size, augment=augment, batch_size=6,
                           eval_batch_size=8)
    size = image_size or 224
    batch = next(data.create_train_iterator(config))
    assert batch["image"].shape == (6, size, size, 3) and batch["image"].dtype == np.float32
    evaluation, = data.create_eval_iterator(config)
    assert evaluation["image"].shape == (8, size, size, 3) and evaluation["mask"].sum() == 6
    # ImageNet's mean and std: 0 and 255 map to these bounds.
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    assert np.all(batch["image"] >= -mean / std - 1e-4)
    assert np.all(batch["image"] <= (1 - mean) / std + 1e-4)


def test_each_split_is_listed_and_checked_once_per_process(tmp_path, monkeypatch):
  root = small_folder(tmp_path)
  checked = []
  check = folders._has_image_header  # pylint: disable=protected-access
  monkeypatch.setattr(folders, "_has_image_header", lambda path: checked.append(path) or
                      check(path))
  config = folder_config(root, batch_size=4, eval_batch_size=4)
  data.get_dataset_info(config)
  next(data.create_train_iterator(config))
  for _ in range(2):  # Two evaluations.
    list(data.create_eval_iterator(config))
  files = [os.path.join(root, split, name, f"{i}.png") for split in ("train", "val")
           for name in ("cat", "dog") for i in range(2)]
  assert sorted(checked) == sorted(files)


# ----------------------------------------------------------------------------
# Train order and eval coverage.
# ----------------------------------------------------------------------------
def test_an_epoch_visits_every_train_file_once_in_a_seeded_order(digits_folder):
  # 1,442 = 7 batches of 206: batches 0-6 are epoch 0, 7-13 epoch 1.
  config = folder_config(digits_folder, batch_size=206, augment=False)
  batches = take(data.create_train_iterator(config), 14)
  epochs = labelled_pixels(batches[:7]), labelled_pixels(batches[7:])
  assert collections.Counter(epochs[0]) == collections.Counter(epochs[1])
  assert len(set(epochs[0])) > 0.95 * DIGITS_TRAIN  # Nearly all distinct images.
  assert collections.Counter(y for y, _ in epochs[0]) == files_per_class(digits_folder, "train")
  assert [y for y, _ in epochs[0]] != [y for y, _ in epochs[1]]
  # The listing is sorted by class; the order is not.
  assert len(set(y for y, _ in epochs[0][:206])) == 10


def test_resume_at_step_n_yields_the_fresh_iterators_batches_from_n_on(digits_folder):
  config = folder_config(digits_folder, batch_size=128)  # 11.3 batches per epoch.
  fresh = take(data.create_train_iterator(config), 14)
  for start_step in (5, 11, 12):
    resumed = take(data.create_train_iterator(config, start_step=start_step), 14 - start_step)
    for expected, got in zip(fresh[start_step:], resumed, strict=True):
      for key in expected:
        np.testing.assert_array_equal(expected[key], got[key], err_msg=f"{start_step} {key}")
  other_seed = next(data.create_train_iterator(folder_config(digits_folder, batch_size=128,
                                                             seed=1)))
  assert not np.array_equal(fresh[0]["label"], other_seed["label"])


@pytest.mark.parametrize("num_devices", [1, 8])
def test_eval_visits_every_file_once_with_padding_masked(digits_folder, num_devices):
  config = folder_config(digits_folder, eval_batch_size=64)
  placement = parallel.PmapParallelism(jax.devices()[:num_devices])
  batches = [jax.device_get(placement.put_batch(b)) for b in data.create_eval_iterator(config)]
  assert len(batches) == -(-DIGITS_TEST // 64)
  assert all(b["mask"].shape == (num_devices, 64 // num_devices) for b in batches)
  masks = np.concatenate([b["mask"].reshape(-1) for b in batches])
  np.testing.assert_array_equal(masks, np.arange(len(masks)) < DIGITS_TEST)
  examples = labelled_pixels(batches)
  assert len(set(examples)) == len(examples) == DIGITS_TEST
  assert collections.Counter(y for y, _ in examples) == files_per_class(digits_folder, "test")


def test_three_processes_read_disjoint_parts_that_cover_each_split(digits_folder, processes):
  # Global batches of 111 are 37 per process; 13 of them hold a part's epoch
  # (1,442 files: parts of 481, 481 and 480).
  config = folder_config(digits_folder, batch_size=111, eval_batch_size=96, augment=False)
  alone = {"train": labelled_pixels(take(data.create_train_iterator(config), 13))[:DIGITS_TRAIN],
           "eval": labelled_pixels(data.create_eval_iterator(config))}
  processes.count = 3
  parts = {"train": [], "eval": []}
  num_batches = []
  for processes.index in range(3):
    size = len(range(processes.index, DIGITS_TRAIN, 3))
    part = labelled_pixels(take(data.create_train_iterator(config), 13))[:size]
    assert len(set(y for y, _ in part)) == 10  # Every class in every part.
    parts["train"] += part
    batches = list(data.create_eval_iterator(config))
    num_batches.append(len(batches))
    parts["eval"] += labelled_pixels(batches)
  assert len(set(num_batches)) == 1  # Lined-up collectives in a multi-host eval.
  for split in ("train", "eval"):
    assert collections.Counter(parts[split]) == collections.Counter(alone[split])


# ----------------------------------------------------------------------------
# Training on it.
# ----------------------------------------------------------------------------
def test_training_on_the_folder_matches_training_on_the_embedded_digits(digits_folder, tfds_dir,
                                                                         tmp_path):
  def accuracy(dataset, num_devices):
    # 180 steps of 32 at 16x16 pixels: about 40 s each on 2 CPU cores.
    config = make_config(dataset, model="cifar_resnet8", image_size=16, batch_size=32,
                         augment=False, num_epochs=4.0, warmup_epochs=0.5,
                         num_devices=num_devices, log_every_steps=100,
                         checkpoint_every_steps=1000, data_dir=tfds_dir)
    workdir = str(tmp_path / dataset.replace(":", "_").replace("/", "_"))
    result = train.train_and_evaluate(config, workdir)
    assert result["examples"] == DIGITS_TEST  # Every test file once.
    with open(os.path.join(workdir, "dataset.json")) as f:
      label_names = json.load(f)["label_names"]
    assert label_names == (list(CLASSES) if dataset != "digits" else [str(d) for d in range(10)])
    return result["accuracy"]

  embedded_accuracy = accuracy("digits", 1)
  folder_accuracy = accuracy(f"image_folder:{digits_folder}", 8)
  assert embedded_accuracy > 0.9
  assert abs(folder_accuracy - embedded_accuracy) < 0.05, (folder_accuracy, embedded_accuracy)


# ----------------------------------------------------------------------------
# Bad data: one clear message, naming the path, before the workdir is touched.
# ----------------------------------------------------------------------------
# Name -> (make the folder in root: the dataset's PATH, the error, its message).
BAD_FOLDERS = {
    "missing": (lambda root: os.path.join(root, "nowhere"), FileNotFoundError,
                "no such directory {root}/nowhere"),
    "no_train": (lambda root: remove(small_folder(root), "train"), FileNotFoundError,
                 "No split folder {root}/train"),
    "no_eval": (lambda root: remove(small_folder(root), "val"), FileNotFoundError,
                "{root} has no eval split: expected a folder val or validation or test"),
    "no_classes": (lambda root: remove(small_folder(root), "val/cat", "val/dog"), ValueError,
                   "{root}/val has no class folders"),
    "empty_class": (lambda root: remove(small_folder(root), "val/dog/0.png", "val/dog/1.png"),
                    ValueError, "Class folder {root}/val/dog holds no images"),
    "other_classes": (lambda root: small_folder(small_folder(root, splits=("train",)),
                                                splits=("val",), classes=("cat", "cow")),
                      ValueError, "The splits of {root} have different classes: only in "
                      "{root}/train: ['dog']; only in {root}/val: ['cow']"),
    "not_an_image": (lambda root: not_an_image(small_folder(root)), ValueError,
                     "{root}/train/dog/notes.jpg is not an image (JPEG, PNG, BMP or GIF)"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_folders_fail_with_a_message_naming_the_path(tmp_path, case):
  make, error, message = BAD_FOLDERS[case]
  root = tmp_path / "images"
  root.mkdir()
  path = make(str(root))
  config = folder_config(path if case == "missing" else root, model="cifar_resnet8",
                         num_train_steps=1)
  with pytest.raises(error, match=re.escape(message.format(root=root))):
    data.get_dataset_info(config)
  workdir = tmp_path / "run"
  with pytest.raises(error, match=re.escape(message.format(root=root))):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_skip_bad_images_leaves_out_and_counts_the_files_that_are_not_images(tmp_path, caplog):
  root = small_folder(tmp_path)
  bad = not_an_image(root)
  info = data.get_dataset_info(folder_config(root, skip_bad_images=True))
  assert (info.num_train, info.num_eval) == (4, 4)
  assert f"Skipped 1 files of {root}/train that are not images: {bad}" in caplog.text
  batch = next(data.create_train_iterator(folder_config(root, skip_bad_images=True,
                                                        batch_size=4)))
  assert batch["image"].shape == (4, 32, 32, 3)


def test_a_damaged_image_is_named_when_it_is_read(tmp_path):
  root = small_folder(tmp_path, images=4)
  damaged = os.path.join(root, "val", "dog", "2.jpg")
  Image.new("RGB", (8, 8)).save(damaged)
  with open(damaged, "rb") as f:
    content = f.read()
  with open(damaged, "wb") as f:
    f.write(content[:len(content) // 2])  # A truncated download: its header is fine.
  config = folder_config(root, batch_size=4, eval_batch_size=4)
  assert data.get_dataset_info(config).num_eval == 9
  with pytest.raises(ValueError, match=re.escape(
      f"{damaged} cannot be read as an image (")):
    list(data.create_eval_iterator(config))


@pytest.mark.parametrize("augment, channels", [("imagenet", 3), ("cifar", 1), (True, 1),
                                               (False, 1)])
def test_augment_names_a_recipe_for_tfds_datasets_too(tfds_dir, augment, channels):
  config = make_config("digits", data_dir=tfds_dir, image_size=None, augment=augment,
                       batch_size=16, eval_batch_size=16)
  info = data.get_dataset_info(config)
  assert info.example_shape == (8, 8, channels)  # The ImageNet recipe decodes to RGB.
  assert info.label_names == tuple(str(d) for d in range(10))
  assert next(data.create_train_iterator(config))["image"].shape == (16, 8, 8, channels)
  assert next(data.create_eval_iterator(config))["image"].shape == (16, 8, 8, channels)


def test_a_bad_augment_value_is_refused_by_name(digits_folder):
  with pytest.raises(ValueError, match=r"config.augment='sometimes' is invalid"):
    data.get_dataset_info(folder_config(digits_folder, augment="sometimes"))


def test_train_py_reports_a_file_that_is_not_an_image_in_one_line(tmp_path):
  root = small_folder(tmp_path / "images")
  bad = not_an_image(root)
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "train.py"),
       "--config=" + os.path.join(REPO, "configs/default.py"), f"--workdir={workdir}",
       f"--config.dataset=image_folder:{root}", "--config.image_size=16",
       "--config.model=cifar_resnet8", "--config.batch_size=4", "--config.num_train_steps=1"],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert errors == [f"error: {bad} is not an image (JPEG, PNG, BMP or GIF). Remove it, or set "
                    "config.skip_bad_images=True to leave out such files."], result.stderr
  assert "Traceback" not in result.stderr
  assert not workdir.exists()
