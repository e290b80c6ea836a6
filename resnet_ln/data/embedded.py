"""Two real datasets that need no download, as TFDS builders: `digits` and `pydoc_topics`.

Defining the classes registers them with TFDS, so after `import resnet_ln.data`
`tfds.load('digits')` and `tfds.builder('pydoc_topics')` work like any other TFDS
name. They build themselves into `data_dir` (default: $TFDS_DATA_DIR, else
~/tensorflow_datasets) on first use, offline, in a few seconds, from data that
ships inside scikit-learn and CPython.
"""

from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds


def _hide_accelerators_from_tensorflow() -> None:
  # TFDS runs TensorFlow ops to encode, write and read these datasets, and may do
  # so before any pipeline of ours has imported TensorFlow; builders call this in
  # `_info()`, which TFDS runs when the builder is created, before any such op.
  from resnet_ln.data import cpu_tensorflow  # pylint: disable=import-outside-toplevel,unused-import


def digits_split(labels: np.ndarray) -> np.ndarray:
  """Which of scikit-learn's digits go to `test`: a fixed, stratified 80/20 rule.

  Within each class, in scikit-learn's order, every 5th example (class rank
  4, 9, 14, ...) is a test example: 355 test and 1,442 train images, the class
  balance of the whole set in both.

  Args:
    labels: [1797] integer classes, in `sklearn.datasets.load_digits()` order.

  Returns:
    [1797] bool, True for test examples.
  """
  rank_in_class = np.zeros(len(labels), np.int64)
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    rank_in_class[members] = np.arange(len(members))
  return rank_in_class % 5 == 4


def pydoc_topics_split(topics: dict[str, str]) -> set[str]:
  """The topics that go to `validation`: whole topics, about 10% of the characters.

  Walk the topics in sorted-key order and move a topic to validation whenever
  validation would still hold at most 10% of the characters walked so far. (The
  simpler "every 10th topic" puts only 2.4% of the text in validation, because a
  few topics such as `specialnames` hold most of it.) With CPython 3.11.7 this is
  35 of 79 topics, 46,448 of 464,970 characters (46,528 UTF-8 bytes); train
  keeps 44 topics, 418,522 characters (419,589 bytes).

  Args:
    topics: topic key -> text, as in `pydoc_data.topics.topics`.
  """
  seen = held_out = 0
  validation = set()
  for key in sorted(topics):
    seen += len(topics[key])
    if held_out + len(topics[key]) <= 0.1 * seen:
      validation.add(key)
      held_out += len(topics[key])
  return validation


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 1,797 8x8 handwritten digits (the UCI optdigits test set)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    _hide_accelerators_from_tensorflow()
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "The 1,797 8x8 handwritten digits bundled with scikit-learn "
            "(sklearn.datasets.load_digits, 10 classes). Pixels are counts 0..16 "
            "of set pixels in 4x4 blocks of a 32x32 bitmap, stored here as uint8 "
            "min(16 * count, 255). Split: within each class every 5th example "
            "is test (1,442 train / 355 test)."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    return {"train": self._generate_examples(test=False),
            "test": self._generate_examples(test=True)}

  def _generate_examples(self, test: bool) -> Iterator[tuple[int, dict]]:
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    digits = load_digits()
    # 16 * 16 = 256 overflows uint8: the (rare) full blocks saturate at 255.
    images = np.minimum(digits.images * 16, 255).astype(np.uint8)[..., None]
    for index in np.flatnonzero(digits_split(digits.target) == test):
      yield int(index), {"image": images[index], "label": int(digits.target[index])}


class PydocTopics(tfds.core.GeneratorBasedBuilder):
  """The Python documentation topics that ship with CPython (`pydoc_data.topics`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    _hide_accelerators_from_tensorflow()
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "The texts of `help('topics')` from CPython's pydoc_data.topics (about "
            "465k characters, one example per topic; the text changes a little "
            "between Python releases). Split: whole topics in sorted-key order, a "
            "topic going to validation while validation holds at most 10% of the "
            "characters seen so far (CPython 3.11.7: 44 train topics with 418,522 "
            "characters, 35 validation topics with 46,448)."),
        features=tfds.features.FeaturesDict({
            "topic": tfds.features.Text(),
            "text": tfds.features.Text(),
        }),
        homepage="https://docs.python.org/3/reference/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the text ships with CPython.
    return {"train": self._generate_examples(validation=False),
            "validation": self._generate_examples(validation=True)}

  def _generate_examples(self, validation: bool) -> Iterator[tuple[str, dict]]:
    from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel

    held_out = pydoc_topics_split(topics)
    for key in sorted(topics):
      if (key in held_out) == validation:
        yield key, {"topic": key, "text": topics[key]}
