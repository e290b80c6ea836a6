"""The training loop: `train_and_evaluate(config, workdir)`.

Reads top to bottom: build the model, the optimiser and the state, restore the
latest checkpoint, then step / log / evaluate / checkpoint until the end. The
device work is in `steps.py`; this file holds the side effects.
"""

import functools
import json
import os
import signal
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from resnet_ln import data
from resnet_ln.models import get_model
from resnet_ln.train import checkpoint as checkpoint_lib
from resnet_ln.train import optimizer as optimizer_lib
from resnet_ln.train import parallel as parallel_lib
from resnet_ln.train import signals
from resnet_ln.train import steps
from resnet_ln.train import workdir as workdir_lib
from resnet_ln.train.metrics import MetricWriter
from resnet_ln.train.state import TrainState, create_train_state
from resnet_ln.train.tasks import Task, get_task
from resnet_ln.train.validation import (ConfigError, model_error, naming_memory_limits,
                                       validate_config)



class NonFiniteError(FloatingPointError):
  """The loss or gradient became inf/NaN; the message names the step."""


# ----------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------
def create_model(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> nn.Module:
  """The registered model for the dataset's task, with the data axis for BatchNorm."""
  kwargs = dict(config.model_kwargs)
  kwargs["num_classes" if info.task == "classification" else "vocab_size"] = info.num_classes
  try:
    model = get_model(config.model, dtype=steps.DTYPES[config.dtype], **kwargs)
  except (TypeError, ValueError) as e:
    raise model_error(config, e) from None
  if hasattr(model, "axis_name"):
    model = model.clone(axis_name=parallel_lib.AXIS)
  return model


def initial_state(config: ml_collections.ConfigDict, model: nn.Module, info: data.DatasetInfo,
                  tx: optax.GradientTransformation) -> TrainState:
  """A fresh state as NumPy arrays (identical on every process: same seed)."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  input_dtype = jnp.float32 if info.task == "classification" else jnp.int32
  dummy = jnp.zeros((1, *info.example_shape), input_dtype)

  @jax.jit
  def init():
    variables = model.init(init_rng, dummy, train=False)
    loss_scale = steps.INITIAL_LOSS_SCALE if config.dtype == "float16" else 1.0
    return create_train_state(train_rng, variables["params"], variables.get("batch_stats", {}),
                              tx, loss_scale)

  return jax.device_get(init())


def check_workdir(workdir: str) -> None:
  """Fails early, with the reason, when `workdir` cannot be created or written.

  In a multi-process run it must also be one directory that every process
  sees: the processes write checkpoints jointly, and all read them to resume.
  """
  if "://" in workdir:
    raise OSError(f"--workdir={workdir}: URLs are not supported (metrics are plain files); "
                  "mount the bucket (e.g. with gcsfuse) and pass the mount point.")
  probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
  error = None
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
  except OSError as e:
    error = (f"Cannot write to --workdir={workdir} ({e.strerror}). Choose a writable directory "
             "with free space.")
  if jax.process_count() > 1:
    error = _shared_workdir_error(workdir, error)
  if os.path.exists(probe):
    os.remove(probe)
  if error:
    raise OSError(error)


def _shared_workdir_error(workdir: str, error: str | None, timeout_s: float = 10.0) -> str | None:
  """The error of any process, or the processes that do not see every process's probe file.

  A collective: every process calls it, so that all fail together.
  """
  wrote = multihost_utils.process_allgather(np.int32(error is None))
  if not wrote.all():
    return error or (f"Process(es) {np.flatnonzero(wrote == 0).tolist()} cannot write to "
                     f"--workdir={workdir}; see their logs.")
  probes = [os.path.join(workdir, f".write_test_{p}") for p in range(jax.process_count())]
  deadline = time.time() + timeout_s  # Network file systems may show new files late.
  while not (sees_all := all(map(os.path.exists, probes))) and time.time() < deadline:
    time.sleep(0.5)
  seen = multihost_utils.process_allgather(np.int32(sees_all))
  if not seen.all():
    return (f"--workdir={workdir} is not one directory shared by all processes: process(es) "
            f"{np.flatnonzero(seen == 0).tolist()} do not see the files that the others write "
            "there. Put it on storage that every host mounts at that path (NFS, Filestore, a "
            "gcsfuse bucket).")
  return None


def training_length(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> tuple[int, int]:
  """(steps per epoch, total train steps) for the global batch size."""
  steps_per_epoch = max(info.num_train // config.batch_size, 1)
  if config.num_train_steps > 0:
    return steps_per_epoch, config.num_train_steps
  return steps_per_epoch, int(round(config.num_epochs * steps_per_epoch))


def evaluate(p_eval_step: Callable, state: TrainState, config: ml_collections.ConfigDict,
             parallel: parallel_lib.Parallelism, task: Task) -> dict[str, float]:
  """Metrics over the whole eval split (every example once, padding masked out)."""
  batches = data.create_eval_iterator(config, layout=parallel.layout,
                                      num_devices=len(parallel.devices))
  sums = [p_eval_step(state, batch) for batch in data.prefetch_to_device(
      batches, 2, parallel.batch_sharding, devices=parallel.devices)]
  if not sums:
    raise ConfigError(f"config.eval_split={config.get('eval_split')!r}: the eval split of "
                      f"{config.dataset!r} is empty; choose a split that has examples.")
  sums = [parallel.unreplicate_metrics(s) for s in jax.device_get(sums)]
  totals = {k: float(np.sum([s[k] for s in sums])) for k in sums[0]}
  return task.summarize(totals)


class _Preemption(signals.StopSignals):
  """SIGTERM and SIGINT: stop start-up at once; in the loop, checkpoint and exit cleanly."""

  def agreed(self) -> bool:
    """Whether any process was asked to stop (a collective in multi-process runs).

    A process told by another sets `received` to, e.g., "SIGTERM to process 1".
    """
    if jax.process_count() == 1:
      return self.received is not None
    mine = signal.Signals.__members__.get(self.received or "", 0)  # 0: none.
    signums = multihost_utils.process_allgather(np.int32(mine))
    if self.received is None and signums.any():
      process = int(np.flatnonzero(signums)[0])
      self.received = f"{signal.Signals(int(signums[process])).name} to process {process}"
    return bool(signums.any())


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.model` on `config.dataset`, resuming from `workdir` if it holds a checkpoint.

  Returns:
    The final eval metrics (plus `step`).
  """
  validate_config(config)
  info = data.get_dataset_info(config)
  task = get_task(info.task, config.label_smoothing)
  parallel = parallel_lib.create_parallelism(config.parallelism, config.num_devices)
  num_devices = len(parallel.devices) * jax.process_count()
  if config.batch_size % num_devices or config.eval_batch_size % num_devices:
    raise ConfigError(
        f"config.batch_size={config.batch_size} and config.eval_batch_size="
        f"{config.eval_batch_size} must both divide by the number of devices ({num_devices})."
    )
  model = create_model(config, info)
  steps_per_epoch, num_train_steps = training_length(config, info)
  schedule = optimizer_lib.create_learning_rate_schedule(config, num_train_steps, steps_per_epoch)
  tx = optimizer_lib.create_optimizer(config, schedule)

  # --- State: fresh, or the newest readable checkpoint. ---
  check_workdir(workdir)
  # One run per workdir; SIGTERM and SIGINT stop it cleanly at any moment.
  with _Preemption() as preemption, workdir_lib.WorkdirLock(workdir), \
      naming_memory_limits(config):
    host_state = initial_state(config, model, info, tx)
    checkpointer = checkpoint_lib.Checkpointer(workdir, config.max_to_keep)
    restored = checkpointer.restore(host_state, config)
    if restored:
      host_state, start_step = restored
      logging.info("Resumed from %s at step %d.", checkpointer.directory, start_step)
    else:
      start_step = 0
    state = parallel.put_state(host_state)
    del host_state
    num_params = sum(x.size for x in jax.tree.leaves(state.params)) // (
        len(parallel.devices) if parallel.layout == "pmap" else 1)
    logging.info("Model %s: %s parameters; %d devices (%s), %d train steps of %d examples.",
                 config.model, f"{num_params:,}", num_devices, config.parallelism,
                 num_train_steps, config.batch_size)

    writer = MetricWriter(workdir)
    if writer.is_primary:
      workdir_lib.record_config(workdir, config, start_step)

    dynamic_loss_scale = config.dtype == "float16"
    # Steps whose update the step function drops when the gradient is not finite:
    # float16's loss scaling does so (halving the scale) on every overflow.
    skips_nonfinite = config.skip_nonfinite or dynamic_loss_scale
    p_train_step = parallel.train_fn(functools.partial(
        steps.train_step, model=model, tx=tx, task=task, axis_name=parallel_lib.AXIS,
        dynamic_loss_scale=dynamic_loss_scale, skip_nonfinite=config.skip_nonfinite))
    p_eval_step = parallel.eval_fn(functools.partial(
        steps.eval_step, model=model, task=task, axis_name=parallel_lib.AXIS))
    train_iter = data.prefetch_to_device(
        data.create_train_iterator(config, start_step=start_step, layout=parallel.layout,
                                   num_devices=len(parallel.devices)),
        2, parallel.batch_sharding, devices=parallel.devices)

    # --- Step, log, evaluate, checkpoint. ---
    preemption.start_training()
    pending = []  # Device metrics since the last fetch: no host sync per step.
    window = {"sums": {}, "steps": 0, "start": time.time()}
    eval_metrics = {}
    step = start_step
    last_saved = start_step if restored else None
    preempted = False
    try:
      while step < num_train_steps:
        state, metrics = p_train_step(state, next(train_iter))
        pending.append(metrics)
        step += 1
        is_last = step == num_train_steps
        preempted = (jax.process_count() == 1 or step % config.log_every_steps == 0) and \
            preemption.agreed()
        should_save = step % config.checkpoint_every_steps == 0 or is_last or preempted
        if step % config.log_every_steps == 0 or is_last or should_save:
          _fetch(pending, window, parallel, step, skips_nonfinite, last_saved)
          pending = []
        if step % config.log_every_steps == 0 or is_last:
          _log_train(writer, window, step, num_train_steps, schedule, config, num_devices, task)
        if should_save:
          checkpointer.save(step, parallel.get_state(state), config)
          last_saved = step
        if preempted:
          logging.warning("Stopping at step %d after %s; rerun the command to resume.", step,
                          preemption.received)
          break
        if config.eval_every_steps and step % config.eval_every_steps == 0 and not is_last:
          eval_metrics = evaluate(p_eval_step, state, config, parallel, task)
          writer.write(step, "eval", eval_metrics)
      if step == num_train_steps and not preempted:
        # The final eval, here rather than in the loop so that a rerun of a
        # finished run (or of one stopped before this eval) evaluates it too.
        eval_metrics = evaluate(p_eval_step, state, config, parallel, task)
        writer.write(step, "eval", eval_metrics)
    finally:
      writer.close()
      checkpointer.close()  # Waits for the last save, and raises if it failed.
  return {"step": step, **eval_metrics}


def _fetch(pending: list[Any], window: dict[str, Any], parallel: parallel_lib.Parallelism,
           step: int, skip_nonfinite: bool, last_saved: int | None) -> None:
  """Adds the pending device metrics to the log window; stops on a non-finite step."""
  fetched = [parallel.unreplicate_metrics(m) for m in jax.device_get(pending)]
  first = step - len(fetched) + 1
  for offset, metrics in enumerate(fetched):
    if metrics["nonfinite"] and not skip_nonfinite:
      kept = f"the last checkpoint (step {last_saved}) is kept" if last_saved else \
          "no checkpoint was written"
      raise NonFiniteError(
          f"Non-finite loss or gradient at step {first + offset}; {kept}. Lower the "
          "learning rate, add gradient clipping (config.grad_clip_norm), or set "
          "config.skip_nonfinite=True to skip such updates."
      )
    if metrics["nonfinite"]:  # A skipped update: counted, its inf/NaN metrics left out.
      window["sums"]["nonfinite"] = window["sums"].get("nonfinite", 0.0) + 1.0
      continue
    for name, value in metrics.items():
      if name != "nonfinite":
        window["sums"][name] = window["sums"].get(name, 0.0) + float(value)
  window["steps"] += len(fetched)


def _log_train(writer: MetricWriter, window: dict[str, Any], step: int, num_train_steps: int,
               schedule: optax.Schedule, config: ml_collections.ConfigDict, num_devices: int,
               task: Task) -> None:
  """Writes the train metrics of the window since the last log, and resets it."""
  elapsed = time.time() - window["start"]
  steps_per_sec = window["steps"] / max(elapsed, 1e-9)
  metrics = task.summarize(window["sums"])
  metrics.update(
      learning_rate=float(schedule(step - 1)),
      steps_per_sec=steps_per_sec,
      examples_per_sec=steps_per_sec * config.batch_size,
      examples_per_sec_per_device=steps_per_sec * config.batch_size / num_devices,
      eta_seconds=(num_train_steps - step) / max(steps_per_sec, 1e-9),
  )
  if window["sums"].get("nonfinite"):
    metrics["skipped_steps"] = window["sums"]["nonfinite"]
  writer.write(step, "train", metrics)
  window.update(sums={}, steps=0, start=time.time())
