"""Byte-level language-modelling windows over a TFDS text split.

A split's `text` examples are joined with newlines, in TFDS's stored order, into
one byte string of length N held in host memory (tiny_shakespeare: 1 MB). Window
i is bytes [i * T, i * T + T + 1): inputs are its first T bytes, targets its last
T, so consecutive windows share one byte and every next-byte prediction in the
text appears in exactly one window. There are (N - 1) // T windows; the last
(N - 1) % T predictions of a split (fewer than T) are in none.
"""

import numpy as np
import tensorflow_datasets as tfds

from resnet_ln.data.cpu_tensorflow import tf

VOCAB_SIZE = 256  # Bytes: any text, no tokenizer to ship.


def load_bytes(builder: tfds.core.DatasetBuilder, split: str) -> np.ndarray:
  """uint8 [N]: the split's texts as UTF-8, joined with b'\\n'."""
  texts = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  return np.frombuffer(b"\n".join(example["text"] for example in texts), np.uint8)


def num_windows(num_bytes: int, seq_len: int) -> int:
  """How many windows of seq_len + 1 bytes, at stride seq_len, fit in num_bytes."""
  return max(num_bytes - 1, 0) // seq_len


def window(text: tf.Tensor, index: tf.Tensor, seq_len: int) -> dict[str, tf.Tensor]:
  """Window `index` of `text` (uint8 [N]) -> {'inputs', 'targets'}: int32 [seq_len]."""
  chunk = tf.cast(text[index * seq_len:index * seq_len + seq_len + 1], tf.int32)
  return {"inputs": tf.ensure_shape(chunk[:-1], [seq_len]),
          "targets": tf.ensure_shape(chunk[1:], [seq_len])}
