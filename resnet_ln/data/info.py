"""`DatasetInfo`: what the trainer needs to know about a dataset before it sees a batch."""

import dataclasses
from typing import TYPE_CHECKING

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
    train_split: the TFDS split trained on.
    eval_split: the TFDS split evaluated on.
  """

  name: str
  task: str
  num_classes: int
  example_shape: tuple
  num_train: int
  num_eval: int
  train_split: str
  eval_split: str


def get_dataset_info(config: "ml_collections.ConfigDict") -> DatasetInfo:
  """The `DatasetInfo` of `config.dataset`, preparing the dataset in data_dir if needed.

  Reads config.dataset, data_dir, image_size, seq_len, num_classes (synthetic
  images only), train_split and eval_split (None: 'validation' when the dataset
  has one, else 'test').

  Raises:
    ValueError: unknown dataset, or one without `image`/`label` or `text` features.
    FileNotFoundError: the dataset is not in data_dir and cannot be made here.
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
  from resnet_ln.data import sources  # pylint: disable=import-outside-toplevel
  return info_from_builder(config, sources.load_builder(name, config.data_dir))


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
    num_train, num_eval = (text.num_windows(len(text.load_bytes(builder, split)), seq_len)
                           for split in (train_split, eval_split))
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
  height, width, channels = features["image"].shape
  size = config.image_size
  if size is None and preprocess.family(config.dataset) == "imagenet":
    size = _DEFAULT_IMAGENET_SIZE
  if size is None and (height is None or width is None):
    raise ValueError(
        f"Dataset {config.dataset!r} has images of varying sizes: set config.image_size.")
  shape = (size, size, channels) if size else (height, width, channels)
  return DatasetInfo(name=config.dataset, task="classification",
                     num_classes=features["label"].num_classes, example_shape=shape,
                     num_train=count(builder, train_split), num_eval=count(builder, eval_split),
                     train_split=train_split, eval_split=eval_split)


def count(builder: "tfds.core.DatasetBuilder", split: "tfds.typing.SplitArg") -> int:
  """Examples in `split` (a name, a slice, or one of `tfds.even_splits`)."""
  # The dataset's cardinality, not info.splits: under tfds.testing.mock_data the
  # metadata has no split sizes, and the cardinality is what will be read.
  return int(builder.as_dataset(split=split, shuffle_files=False).cardinality())
