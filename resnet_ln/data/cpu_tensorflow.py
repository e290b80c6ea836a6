"""TensorFlow for the host only: tf.data must never take accelerator memory.

Import TensorFlow through this module (`from resnet_ln.data.cpu_tensorflow import
tf`). On its first op TensorFlow initialises every GPU it can see and reserves
nearly all of their memory, and on a TPU VM a full `tensorflow` install can claim
the TPU: either leaves JAX with an out-of-memory error or no device at all. Hiding
the accelerators works only before that first op, so this module must be
imported before anything else runs TensorFlow code in the process.
"""

from absl import logging
import tensorflow as tf

for _device_type in ("GPU", "TPU"):
  try:
    tf.config.set_visible_devices([], _device_type)
  except RuntimeError:  # Someone ran TensorFlow ops before this module was imported.
    logging.warning(
        "TensorFlow was initialised before resnet_ln.data could hide the %ss from it; "
        "it may hold accelerator memory. Import resnet_ln.data before other TF code.",
        _device_type)
