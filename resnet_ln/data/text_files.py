"""Text files: `text_files:PATH_OR_GLOB`, byte-level language modelling on your own text.

PATH_OR_GLOB is one file, a folder (its `*.txt` files), or a glob
('corpus/**/*.md'); the files are taken in sorted order. Each file is cut in
two: its first bytes are for training and its last config.eval_fraction for
eval, so that every file contributes to both and no training byte is an eval
byte. The train parts, joined with b'\\n' in file order, make the train split's
byte string; the eval parts likewise the eval split's. Windows are then
`text.window`s of each string, so no training window holds an eval byte.

The text of a split is held in host memory (as for TFDS text datasets): a few
gigabytes at most.
"""

import glob
import os

import numpy as np

from resnet_ln.data import text

PREFIX = "text_files:"
SPLITS = ("train", "eval")
_SEPARATOR = b"\n"


def is_text_files(name: str) -> bool:
  return name.startswith(PREFIX)


def list_files(name: str) -> tuple[str, ...]:
  """The sorted files of 'text_files:PATH_OR_GLOB'.

  Raises:
    FileNotFoundError: the pattern matches no file.
  """
  pattern = os.path.expanduser(name[len(PREFIX):])
  if os.path.isdir(pattern):
    files = glob.glob(os.path.join(glob.escape(pattern), "*.txt"))
  elif glob.has_magic(pattern):
    files = glob.glob(pattern, recursive=True)
  else:
    files = [pattern] if os.path.exists(pattern) else []
  files = sorted(f for f in files if os.path.isfile(f))
  if not files:
    what = "a folder with no *.txt files" if os.path.isdir(pattern) else "no files"
    raise FileNotFoundError(
        f"config.dataset={name!r} matches {what}: give a text file, a folder of *.txt "
        "files, or a glob such as text_files:'corpus/*.md'.")
  return tuple(files)


def eval_size(file_size: int, eval_fraction: float) -> int:
  """Bytes at the end of a file of file_size bytes that belong to eval."""
  return int(round(file_size * eval_fraction))


def split_bytes(files: tuple[str, ...], eval_fraction: float, split: str) -> int:
  """The length of `load_bytes(files, eval_fraction, split)`, from the file sizes alone."""
  sizes = [os.path.getsize(f) for f in files]
  parts = [eval_size(size, eval_fraction) for size in sizes]
  if split == "train":
    parts = [size - part for size, part in zip(sizes, parts)]
  return sum(parts) + len(_SEPARATOR) * (len(files) - 1)


def load_bytes(files: tuple[str, ...], eval_fraction: float, split: str) -> np.ndarray:
  """uint8 [N]: each file's part of `split` ('train': its head, 'eval': its tail), joined."""
  parts = []
  for path in files:
    with open(path, "rb") as f:
      content = f.read()
    cut = len(content) - eval_size(len(content), eval_fraction)
    parts.append(content[:cut] if split == "train" else content[cut:])
  return np.frombuffer(_SEPARATOR.join(parts), np.uint8)


def check(name: str, files: tuple[str, ...], eval_fraction: float, seq_len: int) -> None:
  """Refuses an eval_fraction outside (0, 1), or a split too short for one window.

  Raises:
    ValueError: naming the sizes and what to change.
  """
  if not 0 < eval_fraction < 1:
    raise ValueError(f"config.eval_fraction={eval_fraction!r} is invalid: must be in (0, 1), "
                     "the part of each text file held out for eval.")
  for split in SPLITS:
    num_bytes = split_bytes(files, eval_fraction, split)
    if text.num_windows(num_bytes, seq_len) == 0:
      raise ValueError(
          f"config.dataset={name!r}: the {split} part of the {len(files)} file(s) is "
          f"{num_bytes} bytes, shorter than one window of config.seq_len + 1 = {seq_len + 1} "
          f"bytes. Use more text, a shorter seq_len, or "
          f"{'a larger' if split == 'eval' else 'a smaller'} config.eval_fraction "
          f"(now {eval_fraction}).")
