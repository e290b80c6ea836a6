"""Opening a TFDS dataset by name: prepare it in data_dir, or say exactly what is missing."""

import difflib
import os
import socket

import tensorflow_datasets as tfds

from resnet_ln.data import embedded  # pylint: disable=unused-import  # Registers digits, pydoc_topics.

EMBEDDED = ("digits", "pydoc_topics")
SYNTHETIC = ("synthetic_image", "synthetic_text")
# TFDS's own downloads and its mirror of prepared datasets live here.
_PROBE_ADDRESS = ("storage.googleapis.com", 443)
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")


def unknown_dataset_error(name: str) -> ValueError:
  """The error for a name that is neither ours nor a TFDS dataset, with the close names."""
  known = tfds.list_builders(with_community_datasets=False)
  close = difflib.get_close_matches(name, list(EMBEDDED + SYNTHETIC) + known, n=3)
  return ValueError(
      f"Unknown dataset {name!r}{f' (did you mean {close}?)' if close else ''}. Use an "
      f"offline dataset {EMBEDDED}, synthetic data {SYNTHETIC}, or any of the "
      f"{len(known)} names in tfds.list_builders() with `image` and `label` features "
      "(e.g. 'imagenet2012', 'cifar10', 'mnist') or a `text` feature "
      "(e.g. 'tiny_shakespeare').")


def load_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `name`, prepared in `data_dir` first if it is not there yet.

  The embedded datasets build themselves in about a second; others download
  (when the machine has a network) or need their manual files.

  Args:
    name: a TFDS name, optionally with config and version ('cifar10:3.0.2').
    data_dir: None for $TFDS_DATA_DIR, else TFDS's default ~/tensorflow_datasets.

  Raises:
    ValueError: no such dataset.
    FileNotFoundError: the data is not in data_dir and cannot be made here.
  """
  if name.split(":")[0].split("/")[0] not in tfds.list_builders(with_community_datasets=False):
    raise unknown_dataset_error(name)
  # Preparing and reading run TensorFlow ops: hide the accelerators from it first.
  from resnet_ln.data import cpu_tensorflow  # pylint: disable=import-outside-toplevel,unused-import
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared() and not _prepare(builder):
    # Another process (a second host, a test worker) prepared it first: read
    # its dataset_info, which this builder, made before it existed, lacks.
    builder = tfds.builder(name, data_dir=data_dir)
  return builder


def _prepare(builder: tfds.core.DatasetBuilder) -> bool:
  """`builder.download_and_prepare()`, with its failures turned into instructions.

  Returns:
    True if this builder prepared the dataset, False if another process did
    while this one was at it.
  """
  where = f"{builder.name} is not prepared in {builder.data_dir_root}"
  no_network = (
      f"{where}, and downloading it needs a network{{}}. Prepare it on a machine that "
      f"has one (`tfds build {builder.name} --data_dir=DIR`), copy DIR here and set "
      f"config.data_dir or $TFDS_DATA_DIR to it, or use an offline dataset {EMBEDDED}.")
  # Without a network TFDS retries each URL for minutes before it fails, so look
  # first, unless nothing will be downloaded: our embedded datasets, manual
  # downloads, or a download_and_prepare replaced by `tfds.testing.mock_data`.
  downloads = (builder.name not in EMBEDDED and not builder.MANUAL_DOWNLOAD_INSTRUCTIONS
               and type(builder).download_and_prepare.__module__.startswith(
                   "tensorflow_datasets.core"))
  if downloads and not _network_reachable():
    raise FileNotFoundError(no_network.format(
        f" (no connection to {_PROBE_ADDRESS[0]}: this machine seems to have none)"))
  try:
    builder.download_and_prepare()
  except FileExistsError:
    # TFDS writes into a temporary directory and renames it when done; the
    # rename fails when another process has finished first.
    if not builder.is_prepared():
      raise
    return False
  except ModuleNotFoundError as error:
    if error.name != "importlib_resources":
      raise
    # TFDS 4.9.x imports it on every Python but declares it only for Python < 3.9
    # (tensorflow/datasets#11212).
    raise ImportError(
        "tensorflow-datasets needs the `importlib_resources` package to prepare a "
        "dataset: pip install importlib_resources") from error
  except AssertionError as error:
    if not builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
      raise
    # TFDS asserts that `<data_dir>/downloads/manual/` holds the files.
    manual_dir = builder.data_dir_root / "downloads" / "manual"
    raise FileNotFoundError(
        f"{where}, and it needs a manual download: put its files in {manual_dir}/ "
        f"(or point config.data_dir / $TFDS_DATA_DIR at a directory that holds the "
        f"prepared dataset). TFDS's instructions:\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
    ) from error
  except OSError as error:  # requests' ConnectionError is an OSError.
    if not downloads:
      raise
    raise FileNotFoundError(no_network.format(
        f", and it failed with {type(error).__name__}")) from error
  return True


def _network_reachable(timeout_s: float = 3.0) -> bool:
  """Whether TFDS's storage host accepts a connection (assumed so behind a proxy)."""
  if any(os.environ.get(variable) for variable in _PROXY_VARIABLES):
    return True
  try:
    socket.create_connection(_PROBE_ADDRESS, timeout=timeout_s).close()
  except OSError:
    return False
  return True
