"""Input pipelines: TFDS + tf.data on the host, batches laid out for the devices.

    info = data.get_dataset_info(config)
    batches = data.prefetch_to_device(
        data.create_train_iterator(config, start_step=step), 2)

Importing this package registers the offline TFDS datasets `digits` and
`pydoc_topics` (see `embedded`). TensorFlow is imported, with the GPUs and TPUs
hidden from it, only when a TFDS dataset is first used: synthetic data
(`synthetic_batch`, the 'synthetic_image' / 'synthetic_text' infos) and
`prefetch_to_device` need jax alone.
"""

from resnet_ln.data import embedded  # Registers `digits` and `pydoc_topics` with TFDS.
from resnet_ln.data.info import DatasetInfo
from resnet_ln.data.info import get_dataset_info
from resnet_ln.data.prefetch import prefetch_to_device
from resnet_ln.data.synthetic import synthetic_batch

__all__ = ["DatasetInfo", "get_dataset_info", "create_train_iterator",
           "create_eval_iterator", "prefetch_to_device", "synthetic_batch"]


def __getattr__(name: str):
  # The pipelines import TensorFlow (a few seconds and ~0.5 GB of host memory),
  # so they load on first use rather than with the package.
  if name in ("create_train_iterator", "create_eval_iterator"):
    from resnet_ln.data import pipeline  # pylint: disable=import-outside-toplevel
    return getattr(pipeline, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
