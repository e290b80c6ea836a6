"""The training loop: `train_and_evaluate(config, workdir)`.

Reads top to bottom: build the model, the optimiser and the state, restore the
latest checkpoint, then step / log / evaluate / checkpoint until the end. The
device work is in `steps.py`; this file holds the side effects.
"""

import dataclasses
import json
import os
import re
import signal
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from resnet_ln import data
from resnet_ln.data import preprocess
from resnet_ln.models import trainable_mask
from resnet_ln.train import build
from resnet_ln.train import checkpoint as checkpoint_lib
from resnet_ln.train import optimizer as optimizer_lib
from resnet_ln.train import parallel as parallel_lib
from resnet_ln.train import signals
from resnet_ln.train import warm_start
from resnet_ln.train import workdir as workdir_lib
from resnet_ln.train.metrics import MetricWriter, Stopwatch, TrainWindow
from resnet_ln.train.state import TrainState
from resnet_ln.train.tasks import Task, get_task
from resnet_ln.train.validation import (ConfigError, check_batches_fit_host, model_error,
                                       naming_memory_limits, validate_config)


# A log window that waited for input more than this share of its time is input-bound.
INPUT_BOUND_FRACTION = 0.5
DEFAULT_COMPILATION_CACHE = "~/.cache/resnet_ln/jax"


class NonFiniteError(FloatingPointError):
  """The loss or gradient became inf/NaN; the message names the step."""


# ----------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------
def create_model(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> nn.Module:
  """`build.create_model`, with a model that cannot be built reported as a config error."""
  try:
    return build.create_model(config, info)
  except (TypeError, ValueError) as e:
    raise model_error(config, e) from None


def enable_compilation_cache(directory: str | None) -> None:
  """JAX's persistent compilation cache: a rerun or a resume does not compile again.

  Args:
    directory: the cache; None for $JAX_COMPILATION_CACHE_DIR, else
      DEFAULT_COMPILATION_CACHE; '' leaves the cache off.
  """
  if directory == "":
    return
  current = jax.config.jax_compilation_cache_dir
  directory = os.path.expanduser(directory or current or DEFAULT_COMPILATION_CACHE)
  if current and os.path.expanduser(current) != directory:
    logging.warning("The compilation cache is already %s in this process; not switching to %s.",
                    current, directory)
    return
  jax.config.update("jax_compilation_cache_dir", directory)


def dataset_record(info: data.DatasetInfo) -> dict[str, Any]:
  """`info` as JSON, with the per-channel normalisation of its images ([0, 1] pixel units)."""
  mean, std = preprocess.normalization(info.name)
  return {**dataclasses.asdict(info), "normalization": {"mean": list(mean), "std": list(std)}}


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


def evaluate(eval_step_fn: Callable, state: TrainState, config: ml_collections.ConfigDict,
             parallel: parallel_lib.Parallelism, task: Task) -> dict[str, float]:
  """Metrics over the whole eval split (every example once, padding masked out)."""
  batches = parallel.prefetch(data.create_eval_iterator(config))
  sums = [eval_step_fn(state, batch) for batch in batches]
  if not sums:
    raise ConfigError(f"config.eval_split={config.eval_split!r}: the eval split of "
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


class _ProfileWindow:
  """A `jax.profiler` trace of the steps in config.profile_steps ('START:STOP'), if any."""

  def __init__(self, steps: str, directory: str) -> None:
    self.start, self.stop_after = (map(int, steps.split(":")) if steps else (None, None))
    self.directory = directory
    self.tracing = False

  def before_step(self, step: int) -> None:
    if step == self.start:
      jax.profiler.start_trace(self.directory)
      self.tracing = True

  def after_step(self, step: int, state: Any) -> None:
    if self.tracing and step >= self.stop_after:
      jax.block_until_ready(state)
      self.stop()
      logging.info("Wrote a profile of steps %d to %d to %s (TensorBoard or Perfetto).",
                   self.start + 1, self.stop_after, self.directory)

  def stop(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.model` on `config.dataset`, resuming from `workdir` if it holds a checkpoint.

  Returns:
    The final eval metrics (plus `step`).
  """
  stopwatch = Stopwatch()
  validate_config(config)
  enable_compilation_cache(config.compilation_cache_dir)
  info = data.get_dataset_info(config)
  task = get_task(info.task, config.label_smoothing)
  parallel = parallel_lib.create_parallelism(config.parallelism, config.num_devices)
  parallel.check_batch_size(config.batch_size, "batch_size")
  parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
  check_batches_fit_host(config, info.example_shape)
  model = create_model(config, info)
  steps_per_epoch, num_train_steps = build.training_length(config, info)
  schedule = optimizer_lib.create_learning_rate_schedule(config, num_train_steps, steps_per_epoch)
  tx = optimizer_lib.create_optimizer(config, schedule)

  # --- State: fresh, or the newest readable checkpoint. ---
  check_workdir(workdir)
  # One run per workdir; SIGTERM and SIGINT stop it cleanly at any moment.
  with _Preemption() as preemption, workdir_lib.WorkdirLock(workdir), \
      naming_memory_limits(config):
    host_state = build.initial_state(config, model, info, tx)
    checkpointer = checkpoint_lib.Checkpointer(workdir, config.max_to_keep)
    restored = checkpointer.restore(host_state, config)
    if restored:
      host_state, start_step = restored
      logging.info("Resumed from %s at step %d.", checkpointer.directory, start_step)
    else:
      start_step = 0
      if config.init_from:
        host_state = warm_start.load_initial_weights(config, model, host_state)
    batch_stats_mask = _batch_stats_mask(config, host_state.batch_stats)
    state = parallel.put_state(host_state)
    del host_state
    logging.info("Model %s: %s parameters; %d devices (%s), %d train steps of %d examples.",
                 config.model, f"{parallel.num_params(state.params):,}", parallel.num_devices,
                 parallel.name, num_train_steps, config.batch_size)

    writer = MetricWriter(workdir)
    if writer.is_primary:
      workdir_lib.record_config(workdir, config, start_step)
      # What tools need to use the run without its data: shapes, classes, normalisation.
      with open(os.path.join(workdir, workdir_lib.DATASET_FILE), "w") as f:
        json.dump(dataset_record(info), f, indent=2)

    dynamic_loss_scale = config.dtype == "float16"
    # The step drops the update of a non-finite gradient when asked to, and
    # float16's loss scaling does so (halving the scale) on every overflow;
    # otherwise a non-finite step stops the run.
    nonfinite_is_error = not (config.skip_nonfinite or dynamic_loss_scale)
    train_step_fn, eval_step_fn = build.step_functions(
        model, tx, task, parallel, dynamic_loss_scale=dynamic_loss_scale,
        skip_nonfinite=config.skip_nonfinite, batch_stats_mask=batch_stats_mask)
    train_batches = parallel.prefetch(data.create_train_iterator(config, start_step=start_step))

    # --- Step, log, evaluate, checkpoint. ---
    preemption.start_training()
    profile = _ProfileWindow(config.profile_steps, os.path.join(workdir, "profile"))
    pending = []  # Device metrics since the last fetch: no host sync per step.
    window = TrainWindow()
    eval_metrics = {}
    step = start_step
    preempted = False
    stopwatch.seconds["setup"] = time.perf_counter() - stopwatch.start
    try:
      while step < num_train_steps:
        start = time.perf_counter()
        batch = next(train_batches)
        waited = time.perf_counter() - start  # For the run's total and the log window's.
        stopwatch.seconds["waiting_for_input"] += waited
        window.input_seconds += waited
        profile.before_step(step)
        if step == start_step:
          # The first call compiles the step (or finds it in the persistent
          # compilation cache): timed apart, with the one step it also runs.
          with stopwatch("compiling"):
            state, metrics = jax.block_until_ready(train_step_fn(state, batch))
        else:
          state, metrics = train_step_fn(state, batch)
        pending.append(metrics)
        step += 1
        profile.after_step(step, state)
        is_last = step == num_train_steps
        preempted = (jax.process_count() == 1 or step % config.log_every_steps == 0) and \
            preemption.agreed()
        should_save = step % config.checkpoint_every_steps == 0 or is_last or preempted
        if step % config.log_every_steps == 0 or is_last or should_save:
          _fetch(pending, window, parallel, step, nonfinite_is_error, checkpointer)
          pending = []
        if step % config.log_every_steps == 0 or is_last:
          _log_train(writer, window, step, num_train_steps, schedule, config,
                     parallel.num_devices, task)
        if should_save:
          with stopwatch("checkpointing"):
            checkpointer.save(step, parallel.get_state(state), config)
        if preempted:
          logging.warning("Stopping at step %d after %s; rerun the command to resume.", step,
                          preemption.received)
          break
        if config.eval_every_steps and step % config.eval_every_steps == 0 and not is_last:
          with stopwatch("evaluating"):
            eval_metrics = evaluate(eval_step_fn, state, config, parallel, task)
          writer.write(step, "eval", eval_metrics)
      if step == num_train_steps and not preempted:
        # The final eval, here rather than in the loop so that a rerun of a
        # finished run (or of one stopped before this eval) evaluates it too.
        with stopwatch("evaluating"):
          eval_metrics = evaluate(eval_step_fn, state, config, parallel, task)
        writer.write(step, "eval", eval_metrics)
      with stopwatch("checkpointing"):
        checkpointer.wait()
      writer.write(step, "time", stopwatch.summary())
    finally:
      profile.stop()
      writer.close()
      checkpointer.close()  # Waits for the last save, and raises if it failed.
  return {"step": step, **eval_metrics}


def _batch_stats_mask(config: ml_collections.ConfigDict, batch_stats: Any) -> Any:
  """False for the BatchNorm statistics that config.freeze_batch_stats keeps fixed, else None."""
  if not (config.freeze and config.freeze_batch_stats and batch_stats):
    return None
  paths = flax.traverse_util.flatten_dict(batch_stats, sep="/")
  pattern = re.compile(config.freeze)
  if not any(pattern.search(path) for path in paths):
    return None  # The frozen parameters have no BatchNorm (e.g. only the head is frozen).
  return trainable_mask(batch_stats, config.freeze)


def _fetch(pending: list[Any], window: TrainWindow, parallel: parallel_lib.Parallelism,
           step: int, nonfinite_is_error: bool,
           checkpointer: checkpoint_lib.Checkpointer) -> None:
  """Adds the pending device metrics to the log window; stops on a non-finite step."""
  fetched = [parallel.unreplicate_metrics(m) for m in jax.device_get(pending)]
  first = step - len(fetched) + 1
  for offset, metrics in enumerate(fetched):
    nonfinite = metrics.pop("nonfinite")
    if nonfinite and nonfinite_is_error:
      last_saved = checkpointer.latest_step()
      kept = (f"the last checkpoint (step {last_saved}) is kept" if last_saved is not None
              else "no checkpoint was written")
      raise NonFiniteError(
          f"Non-finite loss or gradient at step {first + offset}; {kept}. Lower the "
          "learning rate, add gradient clipping (config.grad_clip_norm), or set "
          "config.skip_nonfinite=True to skip such updates."
      )
    if nonfinite:
      window.skip()
    else:
      window.add(metrics)


def _log_train(writer: MetricWriter, window: TrainWindow, step: int, num_train_steps: int,
               schedule: optax.Schedule, config: ml_collections.ConfigDict, num_devices: int,
               task: Task) -> None:
  """Writes the train metrics of the window since the last log, and resets it."""
  steps_per_sec = window.steps_per_sec()
  metrics = window.summary(task)
  metrics.update(
      learning_rate=float(schedule(step - 1)),
      steps_per_sec=steps_per_sec,
      examples_per_sec=steps_per_sec * config.batch_size,
      examples_per_sec_per_device=steps_per_sec * config.batch_size / num_devices,
      eta_seconds=(num_train_steps - step) / max(steps_per_sec, 1e-9),
  )
  if window.skipped:
    metrics["skipped_steps"] = float(window.skipped)
  writer.write(step, "train", metrics)
  if window.input_fraction() > INPUT_BOUND_FRACTION and window.steps > 1:
    logging.warning(
        "The run is input-bound: the step waited for input %.0f%% of the time since the last "
        "log. `python -m bench.input_pipeline` measures the pipeline's examples/s per CPU "
        "core; give the host more cores, or use a smaller image_size or lighter augmentation.",
        100 * window.input_fraction())
  window.reset()
