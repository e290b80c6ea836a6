"""The per-device train and eval steps: pure functions of (state, batch).

Both run under a named data axis (`axis_name`), provided by `jax.pmap` or by
`jax.shard_map`; `parallel.py` wraps them. Gradients and BatchNorm statistics are
averaged over that axis, metric sums are added over it.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_ln.train.state import TrainState
from resnet_ln.train.tasks import Task

# The dynamic loss scale doubles after this many finite steps and halves on a
# non-finite one; it is capped so that it cannot grow to inf (a known failure).
LOSS_SCALE_GROWTH_INTERVAL = 2000
MAX_LOSS_SCALE = 2.0**24
INITIAL_LOSS_SCALE = 2.0**15  # float16 runs start here.


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  if batch_stats:
    return {"params": params, "batch_stats": batch_stats}
  return {"params": params}


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    task: Task,
    axis_name: str = "batch",
    dynamic_loss_scale: bool = False,
    skip_nonfinite: bool = False,
    batch_stats_mask: Any = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser update on this device's share of the global batch.

  Args:
    state: the replicated train state.
    batch: this device's examples, e.g. `image: [per_device_batch, H, W, C]`.
    model: the Flax module (with `axis_name` set when it has BatchNorm).
    tx: the optax optimiser.
    task: loss and metrics.
    axis_name: the data-parallel axis.
    dynamic_loss_scale: float16 training: scale the loss, skip non-finite steps
      and adapt the scale.
    skip_nonfinite: skip (and count) updates whose gradient is not finite,
      instead of applying them (the loop then stops with an error).
    batch_stats_mask: a tree of bools shaped as the BatchNorm statistics: False
      keeps those statistics fixed (frozen blocks); None updates all of them.

  Returns:
    The new state and metric sums over the global batch (`nonfinite` is 1 when
    this step's gradient was not finite).
  """
  has_batch_stats = bool(state.batch_stats)
  # One dropout stream per step and device, the same after a resume.
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(axis_name))

  def loss_fn(params):
    outputs = model.apply(
        _variables(params, state.batch_stats), batch[task.input_key], train=True,
        mutable=["batch_stats"] if has_batch_stats else False, rngs={"dropout": rng},
    )
    logits, updates = outputs if has_batch_stats else (outputs, {})
    loss = jnp.mean(task.per_example_loss(logits, batch[task.label_key]))
    return loss * state.loss_scale, (logits, updates.get("batch_stats", {}))

  grads, (logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  if batch_stats_mask is not None:
    batch_stats = jax.tree.map(lambda update, new, old: new if update else old,
                               batch_stats_mask, batch_stats, state.batch_stats)
  grads = jax.lax.pmean(grads, axis_name)
  grads = jax.tree.map(lambda g: g / state.loss_scale, grads)
  finite = _all_finite(grads)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
  )
  if dynamic_loss_scale or skip_nonfinite:
    keep_old = jnp.logical_not(finite)
    new_state = jax.tree.map(
        lambda new, old: jnp.where(keep_old, old, new), new_state,
        state.replace(step=state.step + 1, skipped_steps=state.skipped_steps + 1),
    )
  if dynamic_loss_scale:
    good_steps = jnp.where(finite, state.good_steps + 1, 0)
    grow = good_steps >= LOSS_SCALE_GROWTH_INTERVAL
    scale = jnp.where(finite, jnp.where(grow, state.loss_scale * 2, state.loss_scale),
                      jnp.maximum(state.loss_scale / 2, 1.0))
    new_state = new_state.replace(
        loss_scale=jnp.minimum(scale, MAX_LOSS_SCALE), good_steps=jnp.where(grow, 0, good_steps)
    )

  labels = batch[task.label_key]
  sums = task.metric_sums(logits, labels, jnp.ones(labels.shape[:1], jnp.float32))
  metrics = jax.lax.psum(sums, axis_name)
  metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
  return new_state, metrics


def eval_step(
    state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module, task: Task,
    axis_name: str = "batch",
) -> dict[str, jax.Array]:
  """Metric sums of the model in inference mode over the global batch's real examples.

  Args:
    batch: this device's examples, with `mask: [per_device_batch]` (0 = padding).
  """
  logits = model.apply(_variables(state.params, state.batch_stats), batch[task.input_key],
                       train=False)
  sums = task.metric_sums(logits, batch[task.label_key], batch["mask"])
  return jax.lax.psum(sums, axis_name)
