"""Optimisers and learning-rate schedules from the config (optax)."""

from typing import Any

import jax
import ml_collections
import optax

from resnet_ln.models import trainable_mask

SCHEDULES = ("constant", "piecewise", "step", "cosine")
OPTIMIZERS = ("sgd", "adamw")


def scaled_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The base learning rate, scaled linearly with the batch when configured.

  `learning_rate` is the rate for `lr_base_batch_size` examples (the ImageNet
  recipe's 0.1 per 256); 0 leaves it unscaled.
  """
  base = config.lr_base_batch_size
  scale = config.batch_size / base if base else 1.0
  return config.learning_rate * scale


def create_learning_rate_schedule(
    config: ml_collections.ConfigDict, num_train_steps: int, steps_per_epoch: int
) -> optax.Schedule:
  """The config's schedule, with an optional linear warmup in front.

  Positions are in steps; `warmup_epochs` and `lr_boundaries_epochs`, when set,
  are converted with `steps_per_epoch`.

  - constant: `learning_rate` throughout.
  - piecewise: the rate is multiplied by `lr_factors[k]` at step `lr_boundaries[k]`
    (the CIFAR recipe: 0.1 then /10 at 32k and 48k; its 400-step warmup at 0.01 is
    a boundary with factor 10).
  - step: divided by `1 / lr_decay_factor` at each boundary (the ImageNet 30/60/80).
  - cosine: cosine decay from the peak to 0 at `num_train_steps`.
  """
  peak = scaled_learning_rate(config)
  warmup = config.warmup_steps
  if config.warmup_epochs:
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
  boundaries = list(config.lr_boundaries)
  if config.lr_boundaries_epochs:
    boundaries = [int(round(e * steps_per_epoch)) for e in config.lr_boundaries_epochs]

  name = config.schedule
  if name == "constant":
    main = optax.constant_schedule(peak)
  elif name in ("piecewise", "step"):
    if name == "piecewise":
      factors = list(config.lr_factors)
    else:
      factors = [config.lr_decay_factor] * len(boundaries)
    main = optax.piecewise_constant_schedule(
        peak, {b - warmup: f for b, f in zip(boundaries, factors)}
    )
  elif name == "cosine":
    main = optax.cosine_decay_schedule(peak, max(num_train_steps - warmup, 1))
  else:
    raise ValueError(f"config.schedule={name!r} is not one of {SCHEDULES}.")
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), main], [warmup]
  )


def _decay_mask(params: Any, decay_all: bool) -> Any:
  """True for the leaves that get weight decay: kernels (and embeddings) only.

  Norm scales and biases are excluded unless `decay_all` (the paper's recipe
  decays everything; modern recipes do not, and it matters little either way).
  """
  def decays(path, _):
    return decay_all or path[-1].key in ("kernel", "embedding")

  return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """SGD with momentum (coupled L2 decay, as in the paper) or AdamW.

  Global-norm gradient clipping first when `grad_clip_norm` > 0; parameters
  matched by the `freeze` regex are left out of everything (no update, no
  decay, no optimiser state).
  """
  mask = lambda params: _decay_mask(params, config.weight_decay_all)
  if config.optimizer == "sgd":
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask),
        optax.sgd(schedule, momentum=config.momentum or None,
                  nesterov=config.nesterov),
    )
  elif config.optimizer == "adamw":
    tx = optax.adamw(
        schedule, b1=config.adam_b1, b2=config.adam_b2,
        weight_decay=config.weight_decay, mask=mask,
    )
  else:
    raise ValueError(f"config.optimizer={config.optimizer!r} is not one of {OPTIMIZERS}.")
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  if config.freeze:
    # Frozen parameters get zero updates and no optimiser state; clipping and
    # weight decay see only the trained ones.
    labels = lambda params: jax.tree.map(lambda trainable: "train" if trainable else "freeze",
                                         trainable_mask(params, config.freeze))
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  return tx
