"""The trainer: state, steps, parallelism, optimiser, checkpoints, metrics.

Importing this package imports TensorFlow (the input pipeline), optax and orbax.
"""

from resnet_ln.train.checkpoint import CheckpointError
from resnet_ln.train.checkpoint import load_variables
from resnet_ln.train.state import TrainState
from resnet_ln.train.steps import eval_step
from resnet_ln.train.steps import train_step
from resnet_ln.train.trainer import NonFiniteError
from resnet_ln.train.trainer import create_model
from resnet_ln.train.trainer import train_and_evaluate
from resnet_ln.train.validation import ConfigError
from resnet_ln.train.validation import validate_config
