"""The train state: everything a step reads and writes, and nothing static."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Arrays carried from step to step (and saved in checkpoints).

  Attributes:
    step: the number of updates applied so far.
    params: the model's trainable parameters (float32).
    batch_stats: BatchNorm running statistics ({} for models without them).
    opt_state: the optax optimiser state.
    rng: the run's base PRNG key; step and device are folded in per step.
    loss_scale: the dynamic loss scale (float16 training), 1.0 otherwise.
    good_steps: finite steps since the loss scale last changed.
    skipped_steps: updates skipped for a non-finite loss or gradient.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  loss_scale: jax.Array
  good_steps: jax.Array
  skipped_steps: jax.Array


def create_train_state(rng: jax.Array, params: Any, batch_stats: Any,
                       tx: optax.GradientTransformation, loss_scale: float) -> TrainState:
  """A fresh state at step 0."""
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      rng=rng,
      loss_scale=jnp.asarray(loss_scale, jnp.float32),
      good_steps=jnp.zeros((), jnp.int32),
      skipped_steps=jnp.zeros((), jnp.int32),
  )
