"""What a run is made of, from its config: the model, the initial state, the training length.

The jax-only core that the trainer, the benchmarks and `resnet_ln.load_run` share:
it imports neither TensorFlow nor TFDS nor Orbax nor ml_collections (any config
with attribute access will do), so it runs wherever jax, flax and optax are installed.

    info = data.get_dataset_info(config)
    model = build.create_model(config, info)
    tx = optimizer.create_optimizer(config, schedule)
    host_state = build.initial_state(config, model, info, tx)
"""

import functools
from typing import TYPE_CHECKING, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_ln.models import get_model
from resnet_ln.train import parallel
from resnet_ln.train import steps
from resnet_ln.train.state import TrainState, create_train_state
from resnet_ln.train.tasks import Task, get_task

if TYPE_CHECKING:
  import ml_collections

  from resnet_ln.data.info import DatasetInfo

# config.dtype -> the models' compute dtype.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def create_model(config: "ml_collections.ConfigDict", info: "DatasetInfo") -> nn.Module:
  """The registered `config.model` sized for the dataset, with the data axis for BatchNorm.

  Raises:
    TypeError, ValueError: config.model_kwargs do not build the model.
  """
  kwargs = {**config.model_kwargs, get_task(info.task).size_argument: info.num_classes}
  model = get_model(config.model, dtype=DTYPES[config.dtype], **kwargs)
  if hasattr(model, "axis_name"):
    model = model.clone(axis_name=parallel.AXIS)
  return model


def initial_state(config: "ml_collections.ConfigDict", model: nn.Module, info: "DatasetInfo",
                  tx: optax.GradientTransformation) -> TrainState:
  """A fresh state as NumPy arrays (identical on every process: same seed)."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  dummy = jnp.zeros((1, *info.example_shape), get_task(info.task).input_dtype)
  loss_scale = steps.INITIAL_LOSS_SCALE if config.dtype == "float16" else 1.0

  @jax.jit
  def init():
    variables = model.init(init_rng, dummy, train=False)
    return create_train_state(train_rng, variables["params"], variables.get("batch_stats", {}),
                              tx, loss_scale)

  return jax.device_get(init())


def training_length(config: "ml_collections.ConfigDict", info: "DatasetInfo") -> tuple[int, int]:
  """(steps per epoch, total train steps) for the global batch size."""
  steps_per_epoch = max(info.num_train // config.batch_size, 1)
  if config.num_train_steps > 0:
    return steps_per_epoch, config.num_train_steps
  return steps_per_epoch, int(round(config.num_epochs * steps_per_epoch))


def step_functions(model: nn.Module, tx: optax.GradientTransformation | None, task: Task,
                   parallelism: parallel.Parallelism, *, dynamic_loss_scale: bool = False,
                   skip_nonfinite: bool = False,
                   batch_stats_mask: object = None) -> tuple[Callable, Callable]:
  """The trainer's `steps.train_step` and `steps.eval_step` for `model`, on every device.

  Args:
    tx: the optimiser (None when only the eval step is used).
    parallelism: pmap or shard_map, over which devices.
    dynamic_loss_scale, skip_nonfinite, batch_stats_mask: see `steps.train_step`.

  Returns:
    (train_step_fn(state, batch) -> (state, metrics), eval_step_fn(state, batch) -> metrics).
  """
  train_step_fn = parallelism.train_fn(functools.partial(
      steps.train_step, model=model, tx=tx, task=task, axis_name=parallel.AXIS,
      dynamic_loss_scale=dynamic_loss_scale, skip_nonfinite=skip_nonfinite,
      batch_stats_mask=batch_stats_mask))
  eval_step_fn = parallelism.eval_fn(functools.partial(
      steps.eval_step, model=model, task=task, axis_name=parallel.AXIS))
  return train_step_fn, eval_step_fn
