"""`text_files:PATH_OR_GLOB` on text files written here from CPython's `pydoc_data.topics`.

Each file's training head is lower case and its eval tail (the last 10% of its
bytes) upper case, so that a byte's case says which split it may appear in.
"""

import os
import re

import jax
import ml_collections
import numpy as np
import pytest
from pydoc_data.topics import topics as PYDOC_TOPICS

from configs import default
from resnet_ln import data
from resnet_ln import train
from resnet_ln.data import text_files

SEQ_LEN = 32
FILE_SIZES = (40_000, 25_000, 10_000)  # Multiples of 10: eval tails of exactly 10%.
UPPER = np.arange(ord("A"), ord("Z") + 1)
LOWER = np.arange(ord("a"), ord("z") + 1)


def write_files(folder, sizes=FILE_SIZES, cased=True) -> list[bytes]:
  """Writes folder/part{i}.txt (and one .md, which a folder ignores); returns the contents.

  cased: lower-case heads and upper-case eval tails; False: the text as it is.
  """
  ascii_text = "\n\n".join(PYDOC_TOPICS[k] for k in sorted(PYDOC_TOPICS)).encode(
      "ascii", "ignore")
  contents, offset = [], 0
  for i, size in enumerate(sizes):
    chunk = ascii_text[offset:offset + size]
    offset += size
    head, tail = chunk[:size - size // 10], chunk[size - size // 10:]
    contents.append(head.lower() + tail.upper() if cased else chunk)
    with open(os.path.join(folder, f"part{i}.txt"), "wb") as f:
      f.write(contents[-1])
  with open(os.path.join(folder, "notes.md"), "w") as f:
    f.write("NOT PART OF THE DATASET " * 100)
  return contents


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  folder = tmp_path_factory.mktemp("corpus")
  return str(folder), write_files(folder)


def make_config(dataset, **overrides) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update(dict(dataset=dataset, seq_len=SEQ_LEN, batch_size=64, eval_batch_size=64,
                     seed=0))
  config.update(overrides)
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def windows(batches):
  """uint8 [n, seq_len + 1]: the real (unmasked) windows of text batches."""
  rows = []
  for batch in batches:
    window = np.concatenate([batch["inputs"], batch["targets"][..., -1:]], -1)
    mask = batch["mask"].reshape(-1) if "mask" in batch else np.ones(len(window))
    rows.append(window.reshape(-1, SEQ_LEN + 1)[mask > 0])
  return np.concatenate(rows).astype(np.uint8)


def test_a_folder_a_glob_and_a_file_name_their_files(corpus):
  folder, _ = corpus
  parts = tuple(os.path.join(folder, f"part{i}.txt") for i in range(3))
  assert text_files.list_files(f"text_files:{folder}") == parts
  assert text_files.list_files(f"text_files:{folder}/part*") == parts
  assert len(text_files.list_files(f"text_files:{folder}/*")) == 4
  assert text_files.list_files(f"text_files:{parts[1]}") == parts[1:2]


def test_dataset_info_counts_the_windows_of_each_split(corpus):
  folder, contents = corpus
  info = data.get_dataset_info(make_config(f"text_files:{folder}"))
  train_bytes = sum(len(c) - len(c) // 10 for c in contents) + len(contents) - 1
  eval_bytes = sum(len(c) // 10 for c in contents) + len(contents) - 1
  assert (info.task, info.num_classes, info.example_shape) == ("language_modeling", 256,
                                                               (SEQ_LEN,))
  assert info.num_train == (train_bytes - 1) // SEQ_LEN
  assert info.num_eval == (eval_bytes - 1) // SEQ_LEN


def test_no_training_window_holds_an_eval_byte(corpus):
  folder, contents = corpus
  config = make_config(f"text_files:{folder}", batch_size=256)
  info = data.get_dataset_info(config)
  train_windows = windows(take(data.create_train_iterator(config),
                               -(-info.num_train // 256)))  # A whole epoch.
  assert not np.isin(train_windows, UPPER).any()
  heads = b"\n".join(c[:len(c) - len(c) // 10] for c in contents)
  expected = {heads[i * SEQ_LEN:i * SEQ_LEN + SEQ_LEN + 1] for i in range(info.num_train)}
  assert {w.tobytes() for w in train_windows[:info.num_train]} == expected
  eval_windows = windows(data.create_eval_iterator(config))
  assert len(eval_windows) == info.num_eval
  assert not np.isin(eval_windows, LOWER).any() and np.isin(eval_windows, UPPER).any()
  tails = b"\n".join(c[len(c) - len(c) // 10:] for c in contents)
  np.testing.assert_array_equal(
      eval_windows, np.frombuffer(tails, np.uint8)[:info.num_eval * SEQ_LEN + 1][
          np.arange(info.num_eval)[:, None] * SEQ_LEN + np.arange(SEQ_LEN + 1)])


def test_resume_at_step_n_yields_the_fresh_iterators_batches_from_n_on(corpus):
  folder, _ = corpus
  config = make_config(f"text_files:{folder}", batch_size=600)  # 3.5 batches per epoch.
  fresh = take(data.create_train_iterator(config), 8)
  for start_step in (1, 3, 4, 7):
    resumed = take(data.create_train_iterator(config, start_step=start_step), 8 - start_step)
    for expected, got in zip(fresh[start_step:], resumed, strict=True):
      for key in expected:
        np.testing.assert_array_equal(expected[key], got[key], err_msg=f"{start_step} {key}")
  other_seed = next(data.create_train_iterator(make_config(f"text_files:{folder}",
                                                           batch_size=600, seed=1)))
  assert not np.array_equal(fresh[0]["inputs"], other_seed["inputs"])


def test_two_processes_split_the_eval_windows_in_two(corpus, monkeypatch):
  folder, _ = corpus
  config = make_config(f"text_files:{folder}", eval_batch_size=128)
  process = {"index": 0, "count": 1}
  monkeypatch.setattr(jax, "process_count", lambda: process["count"])
  monkeypatch.setattr(jax, "process_index", lambda: process["index"])
  alone = windows(data.create_eval_iterator(config))
  process["count"] = 2
  parts = []
  for process["index"] in (0, 1):
    parts.append(windows(data.create_eval_iterator(config)))
  np.testing.assert_array_equal(np.concatenate(parts), alone)


def test_a_char_lm_trains_and_evaluates_on_the_files(tmp_path):
  write_files(tmp_path, cased=False)
  config = make_config(
      f"text_files:{tmp_path}/*.txt", model="char_lm", num_train_steps=40, batch_size=32,
      optimizer="adamw", learning_rate=3e-3, weight_decay=0.0, schedule="constant",
      warmup_epochs=0.0, log_every_steps=20, checkpoint_every_steps=40,
      model_kwargs=ml_collections.ConfigDict({"embed_dim": 16, "features": 64}))
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  info = data.get_dataset_info(config)
  assert result["step"] == 40 and result["tokens"] == info.num_eval * SEQ_LEN
  # Uniform over 256 bytes is 8 bits per byte; 40 steps learn the text's letters.
  assert result["loss"] < 0.7 * np.log(256)


@pytest.mark.parametrize("make, overrides, error, message", [
    (lambda d: f"{d}/*.rst", {}, FileNotFoundError, "'text_files:{d}/*.rst' matches no files"),
    (lambda d: f"{d}/empty", {}, FileNotFoundError, "a folder with no *.txt files"),
    (lambda d: f"{d}/missing.txt", {}, FileNotFoundError, "matches no files"),
    (lambda d: f"{d}/small/part0.txt", {}, ValueError,
     "the eval part of the 1 file(s) is 30 bytes, shorter than one window of "
     "config.seq_len + 1 = 33 bytes"),
    (lambda d: f"{d}/small", dict(eval_fraction=1.0), ValueError,
     "config.eval_fraction=1.0 is invalid"),
    (lambda d: f"{d}/small", dict(eval_split="test"), ValueError,
     "leave config.train_split and config.eval_split unset"),
])
def test_bad_text_files_fail_with_a_clear_message(tmp_path, make, overrides, error, message):
  os.makedirs(tmp_path / "empty")
  os.makedirs(tmp_path / "small")
  write_files(tmp_path / "small", sizes=(300,))
  config = make_config(f"text_files:{make(tmp_path)}", model="char_lm", num_train_steps=1,
                       **overrides)
  workdir = tmp_path / "run"
  with pytest.raises(error, match=re.escape(message.format(d=tmp_path))):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
