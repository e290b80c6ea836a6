"""Input pipelines: TFDS + tf.data on the host, this process's batches as NumPy arrays.

    info = data.get_dataset_info(config)
    host_batches = data.create_train_iterator(config, start_step=step)

The pipelines know hosts (which part of the data this process reads), not
devices: `resnet_ln.train.parallel` places the batches on the devices.
TFDS, and TensorFlow with the GPUs and TPUs hidden from it, are imported only
when a TFDS dataset is first used (which registers the offline datasets
`digits` and `pydoc_topics`, see `embedded`): `DatasetInfo` and the
'synthetic_image' / 'synthetic_text' infos need neither. Your own files go
through the same pipelines: 'image_folder:PATH' (`folders`) and
'text_files:PATH_OR_GLOB' (`text_files`).
"""

from resnet_ln.data.info import DatasetInfo
from resnet_ln.data.info import get_dataset_info

__all__ = ["DatasetInfo", "get_dataset_info", "create_train_iterator", "create_eval_iterator"]


def __getattr__(name: str):
  # The pipelines import TensorFlow (a few seconds and ~0.5 GB of host memory),
  # so they load on first use rather than with the package.
  if name in ("create_train_iterator", "create_eval_iterator"):
    from resnet_ln.data import pipeline  # pylint: disable=import-outside-toplevel
    return getattr(pipeline, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
