"""Timing the trainer's steps: compile, warm up, time windows; FLOPs, MFU and memory.

`measure` runs the trainer's own `steps.train_step` / `eval_step` under its
`Parallelism` wrapper on synthetic batches generated on the devices once (a few
in rotation, so no host data moves per step), after compilation and warm-up,
over several windows that each end with `block_until_ready` on the state.
"""

import dataclasses
import statistics
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bench.workloads import Options, SCHEDULE_STEPS, SEQUENCE_MODELS, Workload
from resnet_ln.train import build
from resnet_ln.train import optimizer as optimizer_lib
from resnet_ln.train import parallel as parallel_lib
from resnet_ln.train import tasks
from resnet_ln.train.synthetic import synthetic_batch

NUM_BATCHES = 4  # Distinct device batches used in rotation.


def _compile(fn: Callable, *args) -> tuple[Any, float]:
  """The compiled executable and the wall time of lowering plus compiling it."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _xla_flops(compiled) -> float | None:
  """FLOPs of one run of the compiled per-device program, from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # One entry per program in older JAX versions.
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def lstm_forward_flops(workload: Workload) -> float | None:
  """Matmul FLOPs of one example's forward pass through an LSTM model, else None.

  XLA's cost analysis counts a loop body once, so it misses all but one time step
  of the recurrence; this count (input and recurrent projections, output layer)
  is what TFLOP/s and MFU use for the sequence models.
  """
  if workload.model not in SEQUENCE_MODELS:
    return None
  kwargs = workload.model_kwargs
  hidden, time_steps = kwargs["features"], workload.seq_len
  directions = 2 if kwargs.get("bidirectional") else 1
  inputs = kwargs["embed_dim"] if workload.model == "char_lm" else workload.info.example_shape[-1]
  flops = 0
  for _ in range(kwargs["num_layers"]):
    flops += directions * 2 * time_steps * 4 * hidden * (inputs + hidden)
    inputs = directions * hidden
  if workload.model == "char_lm":
    return flops + 2 * time_steps * hidden * workload.info.num_classes
  return flops + 2 * inputs * workload.info.num_classes


def _time_windows(run_steps: Callable[[int], Any], options: Options) -> list[float]:
  """Seconds per window; `run_steps(n)` dispatches n steps and returns what to block on."""
  jax.block_until_ready(run_steps(options.warmup))
  times = []
  for _ in range(options.windows):
    start = time.perf_counter()
    jax.block_until_ready(run_steps(options.steps))
    times.append(time.perf_counter() - start)
  return times


def _rates(times: list[float], options: Options, per_step: float) -> dict[str, float]:
  """Median, min and max over windows of `per_step` units per second, and (max - min) / median."""
  rates = [per_step * options.steps / t for t in times]
  median = statistics.median(rates)
  return {"median": median, "min": min(rates), "max": max(rates),
          "spread": (max(rates) - min(rates)) / median}


def _figures(times, options, workload, compiled, compile_s, num_devices, forward_flops, passes):
  """Throughput, step time, compile time and FLOPs of one timed function."""
  step_ms = [1e3 * t / options.steps for t in times]
  xla = _xla_flops(compiled)
  figures = {
      "examples_per_s": _rates(times, options, workload.batch_size),
      "tokens_per_s": (_rates(times, options, workload.batch_size * workload.seq_len)
                       if workload.seq_len else None),
      "step_time_ms": {"median": statistics.median(step_ms), "min": min(step_ms),
                       "max": max(step_ms)},
      "window_s": times,
      "compile_s": compile_s,
      "xla_flops_per_step": xla * num_devices if xla else None,
  }
  if forward_flops:
    figures["flops_per_step"] = passes * forward_flops * workload.batch_size
    figures["flops_source"] = (f"analytic LSTM matmul FLOPs ({passes}x forward): XLA's cost "
                               "analysis counts a scan body once")
  else:
    figures["flops_per_step"] = figures["xla_flops_per_step"]
    figures["flops_source"] = (f"XLA cost analysis of the per-device program x {num_devices} "
                               "device(s)")
  flops = figures["flops_per_step"]
  # Per example, to check against the papers (ResNet-50: about 2 x 4.1e9 forward).
  figures["flops_per_example"] = flops / workload.batch_size if flops else None
  median_step_s = statistics.median(times) / options.steps
  figures["tflops_per_s"] = flops / median_step_s / 1e12 if flops else None
  return figures


@dataclasses.dataclass
class TrainerSteps:
  """The trainer's state, steps and synthetic device batches for one workload.

  Attributes:
    state: the initial train state, placed on the devices.
    train_step, eval_step: `build.step_functions` (not compiled yet).
    batches: train batches (inputs and labels), `NUM_BATCHES` in rotation.
    eval_batches: the same batches with eval's `mask` of ones.
    num_params: the model's parameters.
  """

  state: Any
  train_step: Callable
  eval_step: Callable
  batches: list[dict[str, jax.Array]]
  eval_batches: list[dict[str, jax.Array]]
  num_params: int


def trainer_steps(model: nn.Module, workload: Workload, parallel: parallel_lib.Parallelism,
                  dtype: str, seed: int) -> TrainerSteps:
  """What `train.py` builds for `workload` (its config, optimiser and state), on synthetic data."""
  config = workload.config(dtype, seed)
  task = tasks.get_task(workload.info.task)
  schedule = optimizer_lib.create_learning_rate_schedule(config, SCHEDULE_STEPS, SCHEDULE_STEPS)
  tx = optimizer_lib.create_optimizer(config, schedule)
  state = parallel.put_state(build.initial_state(config, model, workload.info, tx))
  train_step, eval_step = build.step_functions(model, tx, task, parallel,
                                               dynamic_loss_scale=dtype == "float16")
  eval_batches = [synthetic_batch(workload.info, workload.batch_size, parallel,
                                  seed=seed + 1 + i, mask=True) for i in range(NUM_BATCHES)]
  batches = [{k: v for k, v in b.items() if k != "mask"} for b in eval_batches]
  return TrainerSteps(state, train_step, eval_step, batches, eval_batches,
                      parallel.num_params(state.params))


class TrainLoop:
  """`loop(n)` runs n train steps from where the last call left off, the batches in
  rotation, and returns the state (`loop.state`), not waiting for it."""

  def __init__(self, step: Callable, state: Any, batches: list[dict[str, jax.Array]]):
    self.step, self.state, self.batches, self.position = step, state, batches, 0

  def __call__(self, n: int) -> Any:
    for _ in range(n):
      self.state, _ = self.step(self.state, self.batches[self.position % len(self.batches)])
      self.position += 1
    return self.state


def measure(model: nn.Module, workload: Workload, parallel: parallel_lib.Parallelism,
            options: Options, dtype: str) -> dict[str, Any]:
  """Trains (and evaluates) `model` on synthetic device batches; the timed figures."""
  setup = trainer_steps(model, workload, parallel, dtype, options.seed)
  state, batches, eval_batches = setup.state, setup.batches, setup.eval_batches
  num_devices = len(parallel.devices)
  forward_flops = lstm_forward_flops(workload)
  compiled, compile_s = _compile(setup.train_step, state, batches[0])
  train_loop = TrainLoop(compiled, state, batches)
  times = _time_windows(train_loop, options)
  result = {"num_params": int(setup.num_params),
            "train": _figures(times, options, workload, compiled, compile_s, num_devices,
                              forward_flops, 3)}
  state = train_loop.state
  del batches, compiled, train_loop

  result["eval"] = None
  if options.eval:
    batches = eval_batches
    compiled, compile_s = _compile(setup.eval_step, state, batches[0])

    def run_eval(n):
      return [compiled(state, batches[i % len(batches)]) for i in range(n)]

    times = _time_windows(run_eval, options)
    result["eval"] = _figures(times, options, workload, compiled, compile_s, num_devices,
                              forward_flops, 1)
  return result


def peak_matmul(dtype: str, size: int, device: jax.Device, runs: int = 10) -> dict[str, Any]:
  """The dense matmul rate of `device`, [size, size] @ [size, size] in `dtype`, over `runs` runs.

  MFU divides by the best run: on a shared host the median is what other jobs
  left over, the best is closer to what the hardware does.
  """
  key_a, key_b = jax.random.split(jax.random.PRNGKey(7))
  make = jax.jit(lambda key: jax.random.normal(key, (size, size), build.DTYPES[dtype]),
                 out_shardings=jax.sharding.SingleDeviceSharding(device))
  a, b = make(key_a), make(key_b)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()  # Compiles.
  matmul(a, b).block_until_ready()
  start = time.perf_counter()
  matmul(a, b).block_until_ready()
  # Enough back-to-back matmuls per run that dispatch does not count (about 0.2 s).
  reps = max(1, min(100, int(0.2 / max(time.perf_counter() - start, 1e-6))))
  seconds = []
  for _ in range(runs):
    start = time.perf_counter()
    for _ in range(reps):
      out = matmul(a, b)
    out.block_until_ready()
    seconds.append((time.perf_counter() - start) / reps)
  flops = 2.0 * size**3
  return {"size": size, "dtype": dtype, "runs": runs, "matmuls_per_run": reps,
          "tflops_per_s": flops / statistics.median(seconds) / 1e12,
          "tflops_per_s_max": flops / min(seconds) / 1e12}


def peak_bytes_in_use(devices: list[jax.Device]) -> int | None:
  """The largest `peak_bytes_in_use` over the devices, or None where the backend has no stats."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
  peaks = [p for p in peaks if p is not None]
  return int(max(peaks)) if peaks else None


def set_mfu(result: dict[str, Any], peak: dict[str, Any], num_devices: int) -> None:
  """Adds `mfu` to the train and eval sections of `result`."""
  for section in (result["train"], result["eval"]):
    if section:
      tflops = section["tflops_per_s"]
      section["mfu"] = tflops / (peak["tflops_per_s_max"] * num_devices) if tflops else None
