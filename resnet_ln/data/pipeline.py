"""tf.data input pipelines: `create_train_iterator` and `create_eval_iterator`.

Hosts and devices. Process p of P reads only its part of a split
(`tfds.even_splits`, the rule of `tfds.split_for_jax_process`: part sizes
differ by at most one), so the processes together see every example once per
epoch. Its batches hold global_batch / P examples, [process_batch, ...] NumPy
arrays; `resnet_ln.train.parallel` lays them out on the devices.

Determinism and resuming (train). A process's stream of examples is a pure
function of config.seed and its part of the split: epoch e visits the part in
an order drawn from (seed, e), and the k-th example of the stream, counted from
step 0, is augmented with seeds drawn from (seed, p, k). `start_step=N` starts
at k = N * process_batch: epoch k // n and offset k % n are computed directly,
and only the offset's records within that one epoch are read and dropped, still
encoded. Images are shuffled by a buffer (config.shuffle_buffer, default up to
50,000 examples: a full shuffle for CIFAR-sized data, ~5.5 GB of JPEGs for
ImageNet) over TFDS's stored order, which TFDS already shuffled once when it
wrote the files; text windows get a full permutation every epoch. The epoch
orders come from TF's seeded shuffle, so they change if the program sets
TensorFlow's global seed (`tf.random.set_seed`); nothing in resnet_ln does.

Eval. Every example of the eval split is visited once across all processes.
Each process pads its part with `mask` = 0 examples up to the same number of
batches, ceil(largest part / process_batch), so that the collectives of a
multi-host eval step line up.

Your own files. An image folder (`folders`) is a listing of paths sorted by
class: process p takes files p, p + P, p + 2P, ... (every class in every part,
sizes within one), each epoch is a full permutation of its file indices, and
only then are the files read and decoded, in the parallel map. Text files
(`text_files`) give one byte string per split and take the TFDS text path.
"""

import itertools
import math
import re
from typing import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from resnet_ln.data import folders
from resnet_ln.data import info as info_lib
from resnet_ln.data import preprocess
from resnet_ln.data import sources
from resnet_ln.data import text
from resnet_ln.data import text_files
from resnet_ln.data.cpu_tensorflow import tf

_DEFAULT_SHUFFLE_BUFFER = 50_000
# What tf.data wraps around an op's error message.
_UNWRAP_ERROR = re.compile(r"\{\{.*?\}\}\s*|Error in user-defined function .*?: Iterator::\S+: ")
_MAX_EPOCHS = 2**20  # Epoch seeds are seed * _MAX_EPOCHS + epoch.
# config.seed is in [0, MAX_SEED), so that the int64 epoch seeds cannot overflow.
MAX_SEED = 2**24


def create_train_iterator(config: ml_collections.ConfigDict, *, start_step: int = 0,
                          ) -> Iterator[dict[str, np.ndarray]]:
  """The infinite, resumable stream of this process's train batches.

  Classification batches are {'image': float32 [process_batch, H, W, C]
  normalised per channel, 'label': int32 [process_batch]}; language modelling
  batches {'inputs', 'targets': int32 [process_batch, seq_len]}.

  Args:
    config: reads dataset, data_dir, batch_size (global), seed, augment,
      image_size, seq_len, shuffle_buffer, train_split, skip_bad_images (image
      folders), eval_fraction (text files).
    start_step: yield the batches a fresh iterator yields from its
      start_step-th batch on.

  Raises:
    ValueError: batch_size does not divide over the processes.
  """
  process_batch = process_batch_size(config.batch_size, "batch_size")
  if config.dataset in sources.SYNTHETIC:
    return _synthetic(info_lib.get_dataset_info(config), config.seed, process_batch)
  info, builder = _open(config)
  start = start_step * process_batch
  index, count = jax.process_index(), jax.process_count()
  if info.task == "language_modeling":
    data = tf.constant(_text_bytes(config, builder, info.train_split))
    low, high = _even_range(text.num_windows(len(data), config.seq_len), index, count)
    stream = _shuffled_epochs(tf.data.Dataset.range(low, high), high - low, config.seed,
                              start, buffer_size=high - low)
    batches = stream.map(lambda i: text.window(data, i, config.seq_len),
                         num_parallel_calls=tf.data.AUTOTUNE)
  else:
    if builder is None:
      # An image folder's listing is sorted by class: a full permutation of
      # this process's file indices each epoch, and the files read after it.
      split = folders.split_of(config.dataset, info.train_split, config.skip_bad_images)
      records = tf.data.Dataset.range(index, len(split.paths), count)
      num_examples = buffer_size = len(range(index, len(split.paths), count))
      load = _file_reader(split)
    else:
      records = _image_records(builder, tfds.even_splits(info.train_split, count)[index])
      num_examples = int(records.cardinality())
      buffer_size = config.shuffle_buffer or min(num_examples, _DEFAULT_SHUFFLE_BUFFER)
      load = _tfds_record
    stream = _shuffled_epochs(records, num_examples, config.seed, start, buffer_size)
    decode = _decoder(config, info, builder)
    base_seed = tf.constant([config.seed, index], tf.int64)

    def augment(position, record):
      image_bytes, label = load(record)
      seed = tf.random.experimental.stateless_fold_in(base_seed, position)
      return {"image": decode(image_bytes, seed if config.augment else None), "label": label}

    batches = stream.enumerate(start).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  batches = finish_batches(batches.batch(process_batch, drop_remainder=True), config.dataset)
  if info.task == "classification" and builder is None:
    return _naming_undecodable_files(batches, split, stream, process_batch)
  return batches


def create_eval_iterator(config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
  """This process's eval batches: its part of the eval split once, padded.

  Batches are the train batches plus 'mask': float32 [process_batch], 1 for
  real examples and 0 for padding. Every process yields the same number of
  batches.

  Args:
    config: reads dataset, data_dir, eval_batch_size (global), image_size,
      seq_len, eval_split, augment (its recipe's eval crop), skip_bad_images
      (image folders), eval_fraction (text files).

  Raises:
    ValueError: eval_batch_size does not divide over the processes.
  """
  process_batch = process_batch_size(config.eval_batch_size, "eval_batch_size")
  index, count = jax.process_index(), jax.process_count()
  if config.dataset in sources.SYNTHETIC:
    info = info_lib.get_dataset_info(config)
    sizes = [high - low for low, high in (_even_range(info.num_eval, i, count)
                                          for i in range(count))]
    return _synthetic(info, config.seed, process_batch,
                      num_batches=math.ceil(max(sizes) / process_batch), num_real=sizes[index])
  info, builder = _open(config)
  if info.task == "language_modeling":
    data = tf.constant(_text_bytes(config, builder, info.eval_split))
    num_windows = text.num_windows(len(data), config.seq_len)
    sizes = [high - low for low, high in (_even_range(num_windows, i, count)
                                          for i in range(count))]
    low, _ = _even_range(num_windows, index, count)
    examples = tf.data.Dataset.range(low, low + sizes[index]).map(
        lambda i: text.window(data, i, config.seq_len))
  else:
    if builder is None:
      split = folders.split_of(config.dataset, info.eval_split, config.skip_bad_images)
      sizes = [len(range(i, len(split.paths), count)) for i in range(count)]
      records = tf.data.Dataset.range(index, len(split.paths), count)
      load = _file_reader(split)
    else:
      splits = tfds.even_splits(info.eval_split, count)
      sizes = [info_lib.count(builder, part) for part in splits]
      records = _image_records(builder, splits[index])
      load = _tfds_record
    decode = _decoder(config, info, builder)

    def preprocess_eval(record):
      image_bytes, label = load(record)
      return {"image": decode(image_bytes, None), "label": label}

    examples = records.map(preprocess_eval, num_parallel_calls=tf.data.AUTOTUNE)
  examples = examples.map(lambda example: {**example, "mask": tf.constant(1.0)})
  padding = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype),
                                  examples.element_spec)
  num_batches = math.ceil(max(sizes) / process_batch)
  batches = (examples.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
             .take(num_batches * process_batch).batch(process_batch))
  batches = finish_batches(batches, config.dataset)
  if info.task == "classification" and builder is None:
    return _naming_undecodable_files(batches, split, records, process_batch)
  return batches


def _open(config: ml_collections.ConfigDict,
          ) -> tuple[info_lib.DatasetInfo, tfds.core.DatasetBuilder | None]:
  """The dataset's info, and its TFDS builder (None for image folders and text files)."""
  if folders.is_image_folder(config.dataset) or text_files.is_text_files(config.dataset):
    return info_lib.get_dataset_info(config), None
  builder = sources.load_builder(config.dataset, config.data_dir)
  return info_lib.info_from_builder(config, builder), builder


def _text_bytes(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder | None,
                split: str) -> np.ndarray:
  """uint8 [N]: the split's text, from TFDS or from text files."""
  if builder is None:
    return text_files.load_bytes(text_files.list_files(config.dataset), config.eval_fraction,
                                 split)
  return text.load_bytes(builder, split)


def process_batch_size(global_batch: int, field: str) -> int:
  """This process's part of the global batch (the devices' part is `parallel`'s to check)."""
  if global_batch % jax.process_count():
    raise ValueError(f"config.{field}={global_batch} does not divide over the "
                     f"{jax.process_count()} processes: every process reads as many examples.")
  return global_batch // jax.process_count()


def _even_range(size: int, index: int, count: int) -> tuple[int, int]:
  """[low, high) of part `index` of `count` near-equal parts of range(size)."""
  return size * index // count, size * (index + 1) // count


def _image_records(builder: tfds.core.DatasetBuilder, split: tfds.typing.SplitArg,
                   ) -> tf.data.Dataset:
  """{'image': encoded bytes, 'label'} in TFDS's stored order (decoding comes later)."""
  records = builder.as_dataset(split=split, shuffle_files=False,
                               decoders={"image": tfds.decode.SkipDecoding()})
  return records.map(lambda example: {"image": example["image"], "label": example["label"]})


def _shuffled_epochs(examples: tf.data.Dataset, num_examples: int, seed: int, start: int,
                     buffer_size: int) -> tf.data.Dataset:
  """`examples` epoch after epoch, each in an order drawn from (seed, epoch), from `start` on.

  Args:
    examples: one epoch, `num_examples` long, in a fixed order.
    start: the position in the infinite stream to begin at.
    buffer_size: the shuffle buffer; num_examples gives a uniform permutation.
  """
  if num_examples == 0:
    raise ValueError("This process's part of the train split is empty: use fewer processes.")
  first_epoch, offset = divmod(start, num_examples)

  def epoch(number: tf.Tensor) -> tf.data.Dataset:
    # A fresh shuffle per epoch, seeded from (seed, epoch) alone, so epoch e's
    # order does not depend on how many epochs this iterator has already run.
    return examples.shuffle(buffer_size, seed=seed * _MAX_EPOCHS + number,
                            reshuffle_each_iteration=False)

  # skip() drops the offset's examples before anything downstream (decoding,
  # augmentation) touches them.
  return tf.data.Dataset.counter(first_epoch).flat_map(epoch).skip(offset)


def _tfds_record(record: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
  """A TFDS record -> (encoded image, int32 label)."""
  return record["image"], tf.cast(record["label"], tf.int32)


def _file_reader(split: folders.Split):
  """An image folder's file index -> (the file's bytes, int32 label)."""
  paths = tf.constant(split.paths.tolist(), tf.string)
  labels = tf.constant(split.labels, tf.int32)
  return lambda i: (tf.io.read_file(tf.gather(paths, i)), tf.gather(labels, i))


def _naming_undecodable_files(batches: Iterator[dict[str, np.ndarray]], split: folders.Split,
                              file_indices: tf.data.Dataset, process_batch: int,
                              ) -> Iterator[dict[str, np.ndarray]]:
  """`batches` of an image folder, with a file that fails to read or decode named.

  The header check when listing catches files that are not images at all; a
  damaged one fails in the middle of tf.data, whose error does not say which
  file it was. The order is deterministic, so the failing batch's files are
  known (`file_indices`, the stream of file indices that `batches` decodes):
  decode them one by one to find it.
  """
  for number in itertools.count():
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.OpError as error:
      indices = file_indices.skip(number * process_batch).take(process_batch)
      bad = [split.paths[i] for i in indices.as_numpy_iterator()
             if not _decodes(split.paths[i])]
      reason = _UNWRAP_ERROR.sub("", error.message.splitlines()[0])
      what = bad[0] if bad else f"A file of {split.directory}"
      raise ValueError(f"{what} cannot be read as an image ({reason}). Remove or replace it "
                       "(config.skip_bad_images leaves out only files that do not start "
                       "like an image).") from None
    yield batch


def _decodes(path: str) -> bool:
  try:
    tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  except tf.errors.OpError:
    return False
  return True


def _decoder(config: ml_collections.ConfigDict, info: info_lib.DatasetInfo,
             builder: tfds.core.DatasetBuilder | None):
  """(encoded image, seed) -> uint8 pixels of info.example_shape, with config.augment's
  recipe; seed None: no augmentation (eval, or config.augment=False)."""
  native_shape = builder.info.features["image"].shape if builder else (None, None, 3)
  image_size = None if info.example_shape == native_shape else info.example_shape[0]
  recipe = preprocess.recipe(info.name, config.augment, info.example_shape[0])

  def decode(image_bytes: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
    return preprocess.preprocess_image(info.name, image_bytes, seed, image_shape=native_shape,
                                       image_size=image_size, augment=seed is not None,
                                       recipe=recipe)

  return decode


def finish_batches(batches: tf.data.Dataset, name: str) -> Iterator[dict[str, np.ndarray]]:
  """Normalises image batches and prefetches them: a NumPy iterator.

  The tail of every pipeline here (and of `bench.input_pipeline`'s).

  Args:
    batches: batched examples; images still uint8.
    name: the dataset, for its normalisation.
  """
  mean, std = preprocess.normalization(name)

  def finish(batch):
    if "image" in batch:
      batch = {**batch, "image": preprocess.normalize(batch["image"], mean, std)}
    return batch

  batches = batches.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True  # The order is part of the contract (resuming).
  # Parallelism comes from the parallel maps; multi-threaded ops inside them
  # would only oversubscribe the cores.
  options.threading.max_intra_op_parallelism = 1
  return batches.prefetch(tf.data.AUTOTUNE).with_options(options).as_numpy_iterator()


def _synthetic(info: info_lib.DatasetInfo, seed: int, process_batch: int,
               num_batches: int | None = None,
               num_real: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """One random host batch, repeated: forever (train), or num_batches times with a
  mask that is 1 for the first num_real examples (eval)."""
  rng = np.random.default_rng(seed)
  if info.task == "classification":
    batch = {"image": rng.standard_normal((process_batch, *info.example_shape), np.float32),
             "label": rng.integers(0, info.num_classes, process_batch, np.int32)}
  else:
    tokens = rng.integers(0, info.num_classes, (process_batch, info.example_shape[0] + 1),
                          np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  for step in itertools.count() if num_batches is None else range(num_batches):
    if num_batches is not None:
      real = np.arange(step * process_batch, (step + 1) * process_batch) < num_real
      batch = {**batch, "mask": real.astype(np.float32)}
    yield batch
