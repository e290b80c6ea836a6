"""`DatasetInfo`: what the trainer needs to know about a dataset before it sees a batch."""

import dataclasses
import functools
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # TFDS and ml_collections, which `DatasetInfo` users never need.
  import ml_collections
  import tensorflow_datasets as tfds

# Synthetic data sized like the real thing, so that steps per epoch and schedules
# match: ImageNet's 1,281,167 / 50,000 images, tiny_shakespeare's 1,003,854 /
# 55,770 training / validation characters.
_SYNTHETIC_IMAGES = (1_281_167, 50_000)
_SYNTHETIC_CHARACTERS = (1_003_854, 55_770)
_DEFAULT_IMAGENET_SIZE = 224


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """A dataset as the trainer sees it, after preprocessing.

  Attributes:
    name: the config's dataset name.
    task: 'classification' or 'language_modeling'.
    num_classes: classes, or the vocabulary size (256 for bytes).
    example_shape: one model input: (height, width, channels) or (seq_len,).
    num_train: training examples (images), or training sequences per epoch.
    num_eval: eval examples (images) or sequences.
    train_split: the TFDS split (or image folder) trained on.
    eval_split: the TFDS split (or image folder) evaluated on.
    label_names: the class names, label i is label_names[i]; () when unnamed
      (language modelling, synthetic data).
  """

  name: str
  task: str
  num_classes: int
  example_shape: tuple
  num_train: int
  num_eval: int
  train_split: str
  eval_split: str
  label_names: tuple[str, ...] = ()


def get_dataset_info(config: "ml_collections.ConfigDict") -> DatasetInfo:
  """The `DatasetInfo` of `config.dataset`, preparing the dataset in data_dir if needed.

  Reads config.dataset, data_dir, image_size, seq_len, augment, num_classes
  (synthetic images only), train_split and eval_split (None: 'validation' when
  the dataset has one, else 'test'); for image folders skip_bad_images, for
  text files eval_fraction.

  Raises:
    ValueError: unknown dataset, one without `image`/`label` or `text` features,
      or an image folder or text files that cannot be used (the message names
      the folder or file).
    FileNotFoundError: the dataset is not in data_dir and cannot be made here,
      or an image folder or text file that is not there.
  """
  name = config.dataset
  if name == "synthetic_image":
    size = config.image_size or _DEFAULT_IMAGENET_SIZE
    num_train, num_eval = _SYNTHETIC_IMAGES
    return DatasetInfo(name=name, task="classification", num_classes=config.num_classes,
                       example_shape=(size, size, 3), num_train=num_train, num_eval=num_eval,
                       train_split="train", eval_split="validation")
  if name == "synthetic_text":
    seq_len = config.seq_len
    num_train, num_eval = (n // seq_len for n in _SYNTHETIC_CHARACTERS)
    return DatasetInfo(name=name, task="language_modeling", num_classes=256,
                       example_shape=(seq_len,), num_train=num_train, num_eval=num_eval,
                       train_split="train", eval_split="validation")
  # pylint: disable=import-outside-toplevel
  from resnet_ln.data import folders, text_files
  if folders.is_image_folder(name):
    return image_folder_info(config)
  if text_files.is_text_files(name):
    return text_files_info(config)
  from resnet_ln.data import sources
  return info_from_builder(config, sources.load_builder(name, config.data_dir))


def image_folder_info(config: "ml_collections.ConfigDict") -> DatasetInfo:
  """`get_dataset_info` for 'image_folder:PATH': lists (once per process) and checks it."""
  # pylint: disable=import-outside-toplevel
  from resnet_ln.data import folders, preprocess
  root = folders.root_of(config.dataset)
  eval_split = folders.eval_split_of(root, config.eval_split)
  train, evaluation = folders.load_splits(root, config.train_split, eval_split,
                                          config.skip_bad_images)
  size = config.image_size or _DEFAULT_IMAGENET_SIZE
  preprocess.recipe(config.dataset, config.augment, size)  # Refuses a bad config.augment.
  return DatasetInfo(name=config.dataset, task="classification",
                     num_classes=len(train.class_names), example_shape=(size, size, 3),
                     num_train=len(train.paths), num_eval=len(evaluation.paths),
                     train_split=config.train_split, eval_split=eval_split,
                     label_names=train.class_names)


def text_files_info(config: "ml_collections.ConfigDict") -> DatasetInfo:
  """`get_dataset_info` for 'text_files:PATH_OR_GLOB': from the file sizes alone."""
  # pylint: disable=import-outside-toplevel
  from resnet_ln.data import text, text_files
  if (config.train_split, config.eval_split) != ("train", None):
    raise ValueError(
        f"config.dataset={config.dataset!r} has the splits {text_files.SPLITS} (each file's "
        "last config.eval_fraction is eval): leave config.train_split and config.eval_split "
        "unset.")
  files = text_files.list_files(config.dataset)
  text_files.check(config.dataset, files, config.eval_fraction, config.seq_len)
  num_train, num_eval = (
      text.num_windows(text_files.split_bytes(files, config.eval_fraction, split),
                       config.seq_len) for split in text_files.SPLITS)
  return DatasetInfo(name=config.dataset, task="language_modeling",
                     num_classes=text.VOCAB_SIZE, example_shape=(config.seq_len,),
                     num_train=num_train, num_eval=num_eval, train_split="train",
                     eval_split="eval")


def info_from_builder(config: "ml_collections.ConfigDict",
                      builder: "tfds.core.DatasetBuilder") -> DatasetInfo:
  """`get_dataset_info` for a prepared TFDS builder."""
  # Imported here, not at the top: they import TensorFlow, which synthetic data
  # and `DatasetInfo` users never need.
  from resnet_ln.data import preprocess, text  # pylint: disable=import-outside-toplevel

  features = builder.info.features
  train_split = config.train_split
  eval_split = config.eval_split or (
      "validation" if "validation" in builder.info.splits else "test")
  if "text" in features:
    seq_len = config.seq_len
    num_train, num_eval = (
        _read_split(field, split, lambda s: text.num_windows(len(text.load_bytes(builder, s)),
                                                             seq_len))
        for field, split in (("train_split", train_split), ("eval_split", eval_split)))
    return DatasetInfo(name=config.dataset, task="language_modeling",
                       num_classes=text.VOCAB_SIZE, example_shape=(seq_len,),
                       num_train=num_train, num_eval=num_eval, train_split=train_split,
                       eval_split=eval_split)
  if "image" not in features or "label" not in features or not hasattr(
      features["label"], "num_classes"):
    raise ValueError(
        f"Dataset {config.dataset!r} has features {sorted(features)}; resnet_ln.data "
        "needs `image` with a ClassLabel `label` (classification) or `text` "
        "(language modelling).")
  split_size = functools.partial(count, builder)
  height, width, channels = features["image"].shape
  size = config.image_size
  if size is None and preprocess.family(config.dataset) == "imagenet":
    size = _DEFAULT_IMAGENET_SIZE
  if size is None and (height is None or width is None):
    raise ValueError(
        f"Dataset {config.dataset!r} has images of varying sizes: set config.image_size.")
  if preprocess.recipe(config.dataset, config.augment, size or height) == "imagenet":
    channels = 3  # The ImageNet recipe decodes to RGB.
  shape = (size, size, channels) if size else (height, width, channels)
  return DatasetInfo(name=config.dataset, task="classification",
                     num_classes=features["label"].num_classes, example_shape=shape,
                     num_train=_read_split("train_split", train_split, split_size),
                     num_eval=_read_split("eval_split", eval_split, split_size),
                     train_split=train_split, eval_split=eval_split,
                     label_names=tuple(features["label"].names))


def _read_split(field: str, split: str, read: Callable[[str], int]) -> int:
  """`read(split)`, with TFDS's error for a split it lacks prefixed by the config field."""
  try:
    return read(split)
  except ValueError as e:
    raise ValueError(f"config.{field}={split!r}: {e}") from e


def count(builder: "tfds.core.DatasetBuilder", split: "tfds.typing.SplitArg") -> int:
  """Examples in `split` (a name, a slice, or one of `tfds.even_splits`)."""
  # The dataset's cardinality, not info.splits: under tfds.testing.mock_data the
  # metadata has no split sizes, and the cardinality is what will be read.
  return int(builder.as_dataset(split=split, shuffle_files=False).cardinality())
