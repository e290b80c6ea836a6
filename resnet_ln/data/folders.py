"""Image folders: `image_folder:PATH`, one subfolder per split and one per class inside it.

    PATH/train/cat/001.jpg
    PATH/train/dog/002.png
    PATH/val/cat/003.jpg          (or validation/ or test/)

the layout of torchvision's and TFDS's `ImageFolder`. The classes are the sorted
subfolder names of a split, labels their indices; files are found anywhere
below a class folder (hidden files and folders, '.DS_Store', are ignored).

A split is listed once per process (`os.scandir`, sorted) and the listing kept:
file paths and labels, never the images. Each file's first bytes are checked
when it is listed, so a file that is not a JPEG, PNG, BMP or GIF stops the run
before it starts, named, instead of failing a decode in the middle of
training; the check reads one small block per file, in parallel (a million
files take about a minute on a local disk). A file with a valid header but
damaged data (a truncated download) fails when it is decoded, in the middle of
the run; `pipeline` then names it.

Pure Python: listing and checking need no TensorFlow; `pipeline` reads and
decodes the files with tf.data.
"""

import concurrent.futures
import dataclasses
import functools
import itertools
import os

import numpy as np
from absl import logging

PREFIX = "image_folder:"
# The eval split's folder, the first of these that exists (config.eval_split: another).
EVAL_SPLITS = ("val", "validation", "test")
# What tf.io.decode_image reads: JPEG, PNG, GIF, BMP, by their first bytes.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
_HEADER_BYTES = 8
_CHECK_THREADS = 32  # Header reads wait on the disk, not the CPU.
_CHECK_CHUNK = 10_000  # Files per batch of reads: a bounded number of pending futures.
_MAX_NAMED = 5  # Skipped files named in the log.


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of an image folder, as listed.

  Attributes:
    directory: PATH/split.
    class_names: the sorted class folder names; label i is class_names[i].
    paths: [num_files] str, the image files, sorted by class, then by path.
    labels: [num_files] int32.
    skipped: the files that are not images, when config.skip_bad_images.
  """

  directory: str
  class_names: tuple[str, ...]
  paths: np.ndarray
  labels: np.ndarray
  skipped: tuple[str, ...]


def is_image_folder(name: str) -> bool:
  return name.startswith(PREFIX)


def root_of(name: str) -> str:
  """PATH of 'image_folder:PATH', which must be a directory.

  Raises:
    FileNotFoundError: no such directory.
  """
  root = os.path.expanduser(name[len(PREFIX):])
  if not root:
    raise ValueError(f"config.dataset={name!r}: give the folder, image_folder:PATH.")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"config.dataset={name!r}: no such directory {root}.")
  return root


def eval_split_of(root: str, eval_split: str | None) -> str:
  """The eval split's folder name: config.eval_split, else the first of EVAL_SPLITS in root.

  Raises:
    FileNotFoundError: that folder does not exist.
  """
  if eval_split is not None:
    return eval_split
  for split in EVAL_SPLITS:
    if os.path.isdir(os.path.join(root, split)):
      return split
  raise FileNotFoundError(
      f"{root} has no eval split: expected a folder {' or '.join(EVAL_SPLITS)} beside "
      "train/ (or set config.eval_split to the name of the folder to evaluate on).")


def load_splits(root: str, train_split: str, eval_split: str,
                skip_bad_images: bool) -> tuple[Split, Split]:
  """The train and eval splits of the image folder `root`, with the same classes.

  Raises:
    FileNotFoundError: a split folder is missing.
    ValueError: a split without classes, an empty class, different classes in
      the two splits, or a file that is not an image (unless skip_bad_images).
  """
  train, evaluation = (list_split(os.path.join(root, split), skip_bad_images)
                       for split in (train_split, eval_split))
  if train.class_names != evaluation.class_names:
    only_train = sorted(set(train.class_names) - set(evaluation.class_names))
    only_eval = sorted(set(evaluation.class_names) - set(train.class_names))
    raise ValueError(
        f"The splits of {root} have different classes: only in {train.directory}: "
        f"{only_train or 'none'}; only in {evaluation.directory}: {only_eval or 'none'}. "
        "Both need the same class folders (an empty folder where a class has no images "
        "is not enough: every class needs images in both splits).")
  return train, evaluation


@functools.lru_cache(maxsize=8)
def list_split(directory: str, skip_bad_images: bool) -> Split:
  """Lists and checks one split folder; cached, so a process lists each split once.

  Raises:
    FileNotFoundError: no such folder.
    ValueError: no class folders, an empty class, or a file that is not an
      image (unless skip_bad_images).
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"No split folder {directory}: an image folder holds train/ and val/ (or "
        "validation/ or test/), each with one folder of images per class.")
  class_names = tuple(sorted(entry.name for entry in os.scandir(directory)
                             if entry.is_dir() and not entry.name.startswith(".")))
  if not class_names:
    raise ValueError(
        f"{directory} has no class folders: put each class's images in a folder of "
        f"its own, {directory}/CLASS_NAME/IMAGE.jpg.")
  per_class = [_files_below(os.path.join(directory, name)) for name in class_names]
  paths = list(itertools.chain.from_iterable(per_class))
  labels = np.repeat(np.arange(len(class_names), dtype=np.int32), [len(f) for f in per_class])
  good = _have_image_headers(paths)
  skipped = tuple(path for path, ok in zip(paths, good) if not ok)
  if skipped and not skip_bad_images:
    raise ValueError(
        f"{skipped[0]} is not an image (JPEG, PNG, BMP or GIF){_and_more(skipped)}. Remove "
        "it, or set config.skip_bad_images=True to leave out such files.")
  if skipped:
    logging.warning("Skipped %d files of %s that are not images: %s%s", len(skipped),
                    directory, ", ".join(skipped[:_MAX_NAMED]),
                    ", ..." if len(skipped) > _MAX_NAMED else "")
  paths, labels = np.array(paths, dtype=object)[good], labels[good]
  counts = np.bincount(labels, minlength=len(class_names))
  if not counts.all():
    empty = os.path.join(directory, class_names[int(np.argmin(counts))])
    raise ValueError(f"Class folder {empty} holds no images: add some, or remove the folder.")
  return Split(directory=directory, class_names=class_names, paths=paths, labels=labels,
               skipped=skipped)


def _files_below(directory: str) -> list[str]:
  """The files anywhere below `directory`, sorted, hidden ones left out."""
  files = []
  for entry in sorted(os.scandir(directory), key=lambda entry: entry.name):
    if entry.name.startswith("."):
      continue
    if entry.is_dir():
      files += _files_below(entry.path)
    else:
      files.append(entry.path)
  return files


def _and_more(paths: tuple[str, ...]) -> str:
  return f" (and {len(paths) - 1} more files)" if len(paths) > 1 else ""


def _have_image_headers(paths: list[str]) -> np.ndarray:
  """[len(paths)] bool: whether each file starts like a JPEG, PNG, BMP or GIF."""
  good = np.zeros(len(paths), bool)
  with concurrent.futures.ThreadPoolExecutor(_CHECK_THREADS) as pool:
    for start in range(0, len(paths), _CHECK_CHUNK):
      chunk = paths[start:start + _CHECK_CHUNK]
      good[start:start + len(chunk)] = list(pool.map(_has_image_header, chunk))
  return good


def _has_image_header(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(_HEADER_BYTES).startswith(_SIGNATURES)


def split_of(name: str, split: str, skip_bad_images: bool) -> Split:
  """Split `split` of the image folder 'image_folder:PATH' (listed once per process)."""
  return list_split(os.path.join(root_of(name), split), skip_bad_images)
