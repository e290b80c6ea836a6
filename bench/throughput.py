"""Training and inference throughput of the registered models, on synthetic device data.

  python -m bench.throughput --model resnet50 --batch-size 256 --dtype bfloat16
  python -m bench.throughput --model char_lm --layer-norm both --dtype float32
  python -m bench.throughput --model cifar_resnet20,resnet18 --parallelism shard_map
  python -m bench.throughput --model all

Times the trainer's own step: `steps.train_step` with the optimiser that
`optimizer.create_optimizer` builds (SGD momentum + weight decay for images,
AdamW + clipping for sequences), under the `parallel` wrapper (pmap or
shard_map), after compilation and warm-up, over several windows that each end
with `block_until_ready` on the state. A few batches are generated on the devices
once and reused in rotation: no host data moves per step. Each workload writes one
JSON file (bench/results/ by default); `python -m bench.report` turns them into
bench/RESULTS.md. Several workloads (`all`, a comma list, `--layer-norm both`)
run one subprocess each, so that peak memory and failures stay per workload.

FLOPs per step come from XLA's cost analysis of the compiled step (analytic
matmul FLOPs for the LSTMs, whose scan body XLA counts once); MFU divides the
achieved rate by a square matmul's, in the same dtype and in the same run. Peak
memory is the allocator's `peak_bytes_in_use` (None on CPU, which reports none).
For `char_lm` on GPU, JAX's cuDNN LSTM (`jax.experimental.rnn`) is timed beside
it at the same sizes; elsewhere that reference is recorded as skipped.

Imports neither TensorFlow nor ml_collections: it runs where only jax, flax and
optax are installed.
"""

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bench import host
import resnet_ln
from resnet_ln.models import get_model
from resnet_ln.models import list_models
from resnet_ln.train import parallel as parallel_lib
from resnet_ln.train import state as state_lib
from resnet_ln.train import optimizer as optimizer_lib
from resnet_ln.train import steps
from resnet_ln.train.steps import DTYPES, INITIAL_LOSS_SCALE
from resnet_ln.train import tasks


RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VOCAB_SIZE = 256  # Bytes, as the character datasets.
SEQUENCE_CLASSES = 10
NUM_BATCHES = 4  # Distinct device batches used in rotation.
SEQUENCE_MODELS = ("char_lm", "seq_classifier")

# The optimiser fields of the trainer's configs (configs/imagenet.py, configs/charlm.py).
# The schedule's position does not change the cost of a step.
SGD = dict(optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=False,
           weight_decay=1e-4, schedule="cosine", warmup_steps=100)
ADAMW = dict(optimizer="adamw", learning_rate=2e-3, weight_decay=0.0, grad_clip_norm=1.0,
             schedule="constant")
SCHEDULE_STEPS = 100_000


class OptimizerConfig(dict):
  """The config fields `optimizer.py` reads, with ConfigDict's attribute access and `.get`."""

  def __getattr__(self, name: str) -> Any:
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None


@dataclasses.dataclass(frozen=True)
class Options:
  """What to run; the command-line flags."""

  model: str = "resnet50"
  batch_size: int = 0  # Global; 0: 256 ImageNet, 128 CIFAR, 32 sequence models.
  dtype: str = "float32"
  parallelism: str = "pmap"
  num_devices: int = 0  # 0: all devices.
  steps: int = 50  # Per window.
  windows: int = 5
  warmup: int = 5
  image_size: int = 0  # 0: 224 for ImageNet nets, 32 for CIFAR nets.
  seq_len: int = 128
  embed_dim: int = 64
  features: int = 256
  num_layers: int = 1
  unroll: int = 1  # Scan unroll factor (sequence models).
  layer_norm: str = "both"  # true, false or both (sequence models).
  eval: bool = True
  peak_size: int = 0  # Matmul size for the peak; 0: 8192 on accelerators, 1024 on CPU.
  cudnn_reference: bool = True
  seed: int = 0
  output: str = ""  # A .json path, or a directory for auto-named files.
  header: bool = True


@dataclasses.dataclass(frozen=True)
class Workload:
  """One model at one size: what is built, fed and timed.

  Attributes:
    model: the registry name.
    model_kwargs: passed to `get_model` (besides dtype).
    task: 'classification' or 'language_modeling'.
    input_shape: one example's input, e.g. (224, 224, 3), or (seq_len,) tokens.
    input_dtype: 'float32' (images, feature sequences) or 'int32' (tokens).
    num_classes: label range (the vocabulary for language models).
    seq_len: time steps per example (sequence models), else None.
    batch_size: global examples per step.
    optimizer: trainer config fields for `optimizer.create_optimizer`.
  """

  model: str
  model_kwargs: dict[str, Any]
  task: str
  input_shape: tuple[int, ...]
  input_dtype: str
  num_classes: int
  seq_len: int | None
  batch_size: int
  optimizer: dict[str, Any]


def _family(model: str) -> str:
  if re.fullmatch(r"cifar_(resnet|plain)\d+", model):
    return "cifar"
  if re.fullmatch(r"(resnet|plain)\d+", model):
    return "imagenet"
  if model in SEQUENCE_MODELS:
    return model
  raise ValueError(f"--model={model!r}: no benchmark workload is defined for it "
                   f"(ResNets, plain nets, {' and '.join(SEQUENCE_MODELS)} are).")


def make_workload(model: str, options: Options, layer_norm: bool = True) -> Workload:
  """The workload of `model` at the sizes `options` asks for."""
  family = _family(model)
  if family in ("imagenet", "cifar"):
    size = options.image_size or (224 if family == "imagenet" else 32)
    classes = 1000 if family == "imagenet" else 10
    batch_size = options.batch_size or (256 if family == "imagenet" else 128)
    return Workload(model, {"num_classes": classes}, "classification", (size, size, 3), "float32",
                    classes, None, batch_size, SGD)
  kwargs = {"features": options.features, "num_layers": options.num_layers,
            "layer_norm": layer_norm, "unroll": options.unroll}
  if family == "char_lm":
    kwargs.update(vocab_size=VOCAB_SIZE, embed_dim=options.embed_dim)
    return Workload(model, kwargs, "language_modeling", (options.seq_len,), "int32", VOCAB_SIZE,
                    options.seq_len, options.batch_size or 32, ADAMW)
  # seq_classifier: `embed_dim` features per time step.
  kwargs["num_classes"] = SEQUENCE_CLASSES
  return Workload(model, kwargs, "classification", (options.seq_len, options.embed_dim), "float32",
                  SEQUENCE_CLASSES, options.seq_len, options.batch_size or 32, ADAMW)


def create_model(workload: Workload, dtype: str) -> nn.Module:
  """The registered model with the data axis for BatchNorm, as `trainer.create_model` builds it."""
  model = get_model(workload.model, dtype=DTYPES[dtype], **workload.model_kwargs)
  if hasattr(model, "axis_name"):
    model = model.clone(axis_name=parallel_lib.AXIS)
  return model


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_variables(model: nn.Module, input_shape: tuple[int, ...], input_dtype: str,
                    rng: jax.Array) -> dict[str, Any]:
  # Cached per model and shape: runs of the same model in one process share the compile.
  return model.init(rng, jnp.zeros((1, *input_shape), input_dtype), train=False)


def initial_state(model: nn.Module, workload: Workload, tx, dtype: str,
                  seed: int) -> state_lib.TrainState:
  """A fresh host state, as `trainer.initial_state` builds it (trainer.py imports TensorFlow)."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = _init_variables(model, workload.input_shape, workload.input_dtype, init_rng)
  loss_scale = INITIAL_LOSS_SCALE if dtype == "float16" else 1.0
  return jax.device_get(state_lib.create_train_state(
      train_rng, variables["params"], variables.get("batch_stats", {}), tx, loss_scale))


def synthetic_batches(workload: Workload, parallel: parallel_lib.Parallelism, *, seed: int,
                      count: int = NUM_BATCHES) -> list[dict[str, jax.Array]]:
  """`count` random batches generated on the devices in the trainer's layout.

  pmap: `[devices, per_device_batch, ...]` from a pmapped generator; shard_map:
  `[global_batch, ...]` from a jitted generator with the mesh's batch sharding.
  Each holds eval's `mask: [batch]` of ones too (the train step reads only inputs
  and labels). Not `resnet_ln.data.synthetic_batch`: importing `resnet_ln.data`
  imports TensorFlow Datasets.
  """
  task = tasks.get_task(workload.task)
  num_devices = len(parallel.devices)

  def generate(key, n):
    input_key, label_key = jax.random.split(key)
    if workload.input_dtype == "int32":
      inputs = jax.random.randint(input_key, (n, *workload.input_shape), 0, workload.num_classes)
    else:
      inputs = jax.random.normal(input_key, (n, *workload.input_shape), jnp.float32)
    label_shape = (n, workload.seq_len) if workload.task == "language_modeling" else (n,)
    batch = {task.input_key: inputs,
             task.label_key: jax.random.randint(label_key, label_shape, 0, workload.num_classes)}
    batch["mask"] = jnp.ones((n,), jnp.float32)
    return batch

  keys = jax.random.split(jax.random.PRNGKey(seed + 1), count)
  if parallel.layout == "pmap":
    per_device = workload.batch_size // num_devices
    gen = jax.pmap(lambda key: generate(key, per_device), devices=parallel.devices)
    return [gen(jax.random.split(key, num_devices)) for key in keys]
  gen = jax.jit(lambda key: generate(key, workload.batch_size),
                out_shardings=parallel.batch_sharding)
  return [gen(key) for key in keys]


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
  hidden, steps_ = kwargs["features"], workload.seq_len
  directions = 2 if kwargs.get("bidirectional") else 1
  inputs = kwargs["embed_dim"] if workload.model == "char_lm" else workload.input_shape[-1]
  flops = 0
  for _ in range(kwargs["num_layers"]):
    flops += directions * 2 * steps_ * 4 * hidden * (inputs + hidden)
    inputs = directions * hidden
  if workload.model == "char_lm":
    return flops + 2 * steps_ * hidden * workload.num_classes
  return flops + 2 * inputs * workload.num_classes


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


def measure(model: nn.Module, workload: Workload, parallel: parallel_lib.Parallelism,
            options: Options, dtype: str) -> dict[str, Any]:
  """Trains (and evaluates) `model` on synthetic device batches; the timed figures."""
  task = tasks.get_task(workload.task)
  config = OptimizerConfig(batch_size=workload.batch_size, **workload.optimizer)
  schedule = optimizer_lib.create_learning_rate_schedule(config, SCHEDULE_STEPS, SCHEDULE_STEPS)
  tx = optimizer_lib.create_optimizer(config, schedule)
  host_state = initial_state(model, workload, tx, dtype, options.seed)
  num_params = sum(x.size for x in jax.tree.leaves(host_state.params))
  state = parallel.put_state(host_state)
  del host_state
  num_devices = len(parallel.devices)
  forward_flops = lstm_forward_flops(workload)

  train_step = parallel.train_fn(functools.partial(
      steps.train_step, model=model, tx=tx, task=task, axis_name=parallel_lib.AXIS,
      dynamic_loss_scale=dtype == "float16"))
  eval_batches = synthetic_batches(workload, parallel, seed=options.seed)
  batches = [{k: v for k, v in b.items() if k != "mask"} for b in eval_batches]
  compiled, compile_s = _compile(train_step, state, batches[0])
  position = 0

  def run_train(n):
    nonlocal state, position
    for _ in range(n):
      state, _ = compiled(state, batches[position % len(batches)])
      position += 1
    return state

  times = _time_windows(run_train, options)
  result = {"num_params": int(num_params),
            "train": _figures(times, options, workload, compiled, compile_s, num_devices,
                              forward_flops, 3)}
  del batches, compiled

  result["eval"] = None
  if options.eval:
    eval_step = parallel.eval_fn(functools.partial(
        steps.eval_step, model=model, task=task, axis_name=parallel_lib.AXIS))
    batches = eval_batches
    compiled, compile_s = _compile(eval_step, state, batches[0])

    def run_eval(n):
      return [compiled(state, batches[i % len(batches)]) for i in range(n)]

    times = _time_windows(run_eval, options)
    result["eval"] = _figures(times, options, workload, compiled, compile_s, num_devices,
                              forward_flops, 1)
  return result


class CudnnCharLM(nn.Module):
  """`char_lm`'s shapes on the cuDNN LSTM that JAX ships: embedding, LSTM stack, projection.

  The reference point for the LSTMs in `resnet_ln.models`: no LayerNorm (cuDNN has
  none), float32 only (`jax.experimental.rnn`'s limit), GPU only.
  """

  vocab_size: int
  embed_dim: int
  features: int
  num_layers: int

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    """Next-token logits, [batch, time, vocab_size] float32, from tokens [batch, time]."""
    from jax.experimental import rnn  # pylint: disable=g-import-not-at-top

    x = nn.Embed(self.vocab_size, self.embed_dim)(tokens)
    sizes = dict(input_size=self.embed_dim, hidden_size=self.features, num_layers=self.num_layers)
    # Named `kernel` so that the optimiser's weight-decay mask treats it as the
    # Flax LSTM's kernels.
    weights = self.param(
        "kernel", lambda key: rnn.init_lstm_weight(key, bidirectional=False, **sizes))
    carry = jnp.zeros((self.num_layers, tokens.shape[0], self.features), jnp.float32)
    lengths = jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32)
    y, _, _ = rnn.lstm(x, carry, carry, weights, lengths, dropout=0.0, bidirectional=False, **sizes)
    return nn.Dense(self.vocab_size)(y)


def cudnn_skip_reason() -> str | None:
  """Why JAX's cuDNN LSTM cannot run in this process, or None where it can (a GPU)."""
  backend = jax.default_backend()
  if backend != "gpu":
    return f"jax.experimental.rnn.lstm needs cuDNN (a GPU); backend is {backend}."
  return None


def cudnn_reference(workload: Workload, parallel: parallel_lib.Parallelism,
                    options: Options) -> dict[str, Any]:
  """Times `CudnnCharLM` at the workload's sizes, with the same step and optimiser."""
  reason = cudnn_skip_reason()
  if reason:
    return {"skipped": reason}
  kwargs = workload.model_kwargs
  model = CudnnCharLM(kwargs["vocab_size"], kwargs["embed_dim"], kwargs["features"],
                      kwargs["num_layers"])
  reference = dataclasses.replace(workload, model_kwargs={**kwargs, "layer_norm": False})
  try:
    result = measure(model, reference, parallel, options, "float32")
  except Exception as error:  # pylint: disable=broad-except
    # The reference must never cost the main figures, whatever cuDNN says.
    return {"error": f"{type(error).__name__}: {error}"}
  return {"model": "jax.experimental.rnn.lstm (cuDNN)", "dtype": "float32",
          "note": "float32 only (jax.experimental.rnn); no LayerNorm", **result}


def peak_matmul(dtype: str, size: int, device: jax.Device, runs: int = 10) -> dict[str, Any]:
  """The dense matmul rate of `device`, [size, size] @ [size, size] in `dtype`, over `runs` runs.

  MFU divides by the best run: on a shared host the median is what other jobs
  left over, the best is closer to what the hardware does.
  """
  key_a, key_b = jax.random.split(jax.random.PRNGKey(7))
  make = jax.jit(lambda key: jax.random.normal(key, (size, size), DTYPES[dtype]),
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


def environment(devices: list[jax.Device]) -> dict[str, Any]:
  """Where the figures come from: devices, versions, flags."""
  return {
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "device_name": str(devices[0]),
      "num_devices": len(devices),
      "host_cpu": host.cpu_model(),
      "host_cpu_count": os.cpu_count(),
      "jax_version": jax.__version__,
      "jaxlib_version": host.package_version("jaxlib"),
      "flax_version": host.package_version("flax"),
      "optax_version": host.package_version("optax"),
      "package_version": resnet_ln.__version__,
      "git_commit": host.git_commit(),
      "python_version": platform.python_version(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # Other jobs on the host slow a CPU run: the 1-minute load average at the start.
      "host_load_avg_1m": host.load_average(),
  }


def benchmark(workload: Workload, options: Options) -> dict[str, Any]:
  """Every figure of one workload, as written to its JSON file."""
  parallel = parallel_lib.create_parallelism(options.parallelism, options.num_devices)
  num_devices = len(parallel.devices)
  if workload.batch_size % num_devices:
    raise ValueError(f"--batch-size={workload.batch_size} must divide by the number of devices "
                     f"({num_devices}).")
  model = create_model(workload, options.dtype)
  result = {
      "benchmark": "throughput",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      **environment(parallel.devices),
      "model": workload.model,
      "model_kwargs": workload.model_kwargs,
      "dtype": options.dtype,
      "parallelism": options.parallelism,
      "batch_size": workload.batch_size,
      "per_device_batch": workload.batch_size // num_devices,
      "input_shape": list(workload.input_shape),
      "seq_len": workload.seq_len,
      "optimizer": workload.optimizer,
      "steps_per_window": options.steps,
      "windows": options.windows,
      "warmup_steps": options.warmup,
      "batches_in_rotation": NUM_BATCHES,
  }
  result.update(measure(model, workload, parallel, options, options.dtype))
  result["peak_bytes_in_use"] = peak_bytes_in_use(parallel.devices)
  result["peak_bytes_note"] = "max over devices of the allocator's peak since the process started"
  if workload.model == "char_lm" and options.cudnn_reference:
    result["cudnn_lstm"] = cudnn_reference(workload, parallel, options)

  # Last, so that its buffers do not count in the model's peak memory.
  size = options.peak_size or (1024 if jax.default_backend() == "cpu" else 8192)
  result["peak_matmul"] = peak_matmul(options.dtype, size, parallel.devices[0])
  result["mfu_note"] = (f"achieved TFLOP/s / ({num_devices} x the best single-device matmul rate "
                        "in the same dtype, measured in this run)")
  _set_mfu(result, result["peak_matmul"], num_devices)
  reference = result.get("cudnn_lstm", {})
  if "train" in reference:
    # The cuDNN LSTM runs in float32 whatever --dtype is: its own peak.
    if reference["dtype"] != options.dtype:
      reference["peak_matmul"] = peak_matmul(reference["dtype"], size, parallel.devices[0])
    _set_mfu(reference, reference.get("peak_matmul", result["peak_matmul"]), num_devices)
  return result


def _set_mfu(result: dict[str, Any], peak: dict[str, Any], num_devices: int) -> None:
  """Adds `mfu` to the train and eval sections of `result`."""
  for section in (result["train"], result["eval"]):
    if section:
      tflops = section["tflops_per_s"]
      section["mfu"] = tflops / (peak["tflops_per_s_max"] * num_devices) if tflops else None


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> Options:
  """Options from command-line flags (defaults from `Options`)."""
  defaults = Options()
  parser = argparse.ArgumentParser(prog="python -m bench.throughput",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--model", default=defaults.model,
                      help="a registered model, a comma-separated list, or 'all'")
  parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                      help="global batch; 0: 256 ImageNet, 128 CIFAR, 32 sequence models")
  parser.add_argument("--dtype", choices=sorted(DTYPES), default=defaults.dtype)
  parser.add_argument("--parallelism", choices=parallel_lib.PARALLELISMS,
                      default=defaults.parallelism)
  parser.add_argument("--num-devices", type=int, default=defaults.num_devices, help="0: all")
  parser.add_argument("--steps", type=int, default=defaults.steps, help="steps per timed window")
  parser.add_argument("--windows", type=int, default=defaults.windows)
  parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed steps first")
  parser.add_argument("--image-size", type=int, default=defaults.image_size,
                      help="0: 224 for ImageNet nets, 32 for CIFAR nets")
  parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
  parser.add_argument("--embed-dim", type=int, default=defaults.embed_dim,
                      help="char_lm embedding; seq_classifier input features")
  parser.add_argument("--features", type=int, default=defaults.features, help="LSTM hidden size")
  parser.add_argument("--num-layers", type=int, default=defaults.num_layers)
  parser.add_argument("--unroll", type=int, default=defaults.unroll, help="LSTM scan unroll factor")
  parser.add_argument("--layer-norm", choices=("true", "false", "both"),
                      default=defaults.layer_norm)
  parser.add_argument("--no-eval", dest="eval", action="store_false", help="time training only")
  parser.add_argument("--peak-size", type=int, default=defaults.peak_size,
                      help="matmul size for the peak; 0: 8192 (1024 on CPU)")
  parser.add_argument("--no-cudnn-reference", dest="cudnn_reference", action="store_false",
                      help="char_lm on GPU: skip timing jax.experimental.rnn's cuDNN LSTM")
  parser.add_argument("--seed", type=int, default=defaults.seed)
  parser.add_argument("--output", default=defaults.output,
                      help="a .json file, or a directory for auto-named files (bench/results)")
  parser.add_argument("--no-header", dest="header", action="store_false", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  for name in ("steps", "windows", "unroll"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
  return Options(**vars(args))


def _argv(options: Options, explicit: tuple[str, ...] = ("model",)) -> list[str]:
  """Flags that reproduce `options`: the `explicit` fields and every non-default."""
  flags = []
  for field in dataclasses.fields(Options):
    value, default = getattr(options, field.name), field.default
    if value == default and field.name not in explicit:
      continue
    if isinstance(value, bool):
      flags.append({"eval": "--no-eval", "cudnn_reference": "--no-cudnn-reference",
                    "header": "--no-header"}[field.name])
    else:
      flags += [f"--{field.name.replace('_', '-')}", str(value)]
  return flags


def expand(options: Options) -> list[Options]:
  """One Options per workload: each model, and each LayerNorm setting of the sequence models."""
  if options.model == "all":
    models = []
    for name in list_models():
      try:
        _family(name)
      except ValueError:
        print(f"Skipping {name}: no benchmark workload for it.", file=sys.stderr)
        continue
      models.append(name)
  else:
    models = [m.strip() for m in options.model.split(",") if m.strip()]
  runs = []
  for name in models:
    _family(name)
    settings = ("true", "false") if options.layer_norm == "both" else (options.layer_norm,)
    for layer_norm in settings if name in SEQUENCE_MODELS else (options.layer_norm,):
      runs.append(dataclasses.replace(options, model=name, layer_norm=layer_norm))
  return runs


def command(options: Options, workload: Workload) -> str:
  """The command line that reruns this workload alone, every size spelled out."""
  explicit = ("model", "batch_size", "dtype", "parallelism", "steps", "windows", "warmup")
  if workload.seq_len:
    explicit += ("seq_len", "embed_dim", "features", "num_layers", "unroll", "layer_norm")
    resolved = dataclasses.replace(options, batch_size=workload.batch_size)
  else:
    explicit += ("image_size",)
    resolved = dataclasses.replace(options, batch_size=workload.batch_size,
                                   image_size=workload.input_shape[0], layer_norm="both")
  line = shlex.join(["python", "-m", "bench.throughput",
                     *_argv(dataclasses.replace(resolved, header=True, output=""), explicit)])
  flags = os.environ.get("XLA_FLAGS", "").strip()
  return f"XLA_FLAGS={shlex.quote(flags)} {line}" if flags else line


def output_path(result: dict[str, Any], output: str) -> str:
  """`output` when it names a .json file, else an auto-named file in it (or bench/results)."""
  if output.endswith(".json"):
    return output
  kwargs = result["model_kwargs"]
  if result["seq_len"]:
    shape = (f"t{result['seq_len']}h{kwargs['features']}l{kwargs['num_layers']}"
             + ("_ln" if kwargs["layer_norm"] else "_noln")
             + (f"_u{kwargs['unroll']}" if kwargs.get("unroll", 1) > 1 else ""))
  else:
    shape = f"{result['input_shape'][0]}px"
  stamp = re.sub(r"[-:]", "", result["date"])[:15]
  device = re.sub(r"[^a-z0-9]+", "-", result["device_kind"].lower()).strip("-")
  name = (f"{device}_{result['model']}_{shape}_{result['dtype']}_{result['parallelism']}"
          f"x{result['num_devices']}_b{result['batch_size']}_{stamp}.json")
  return os.path.join(output or RESULTS_DIR, name)


HEADER = ("model", "config", "dtype", "parallel", "batch", "train ex/s", "tokens/s", "step ms",
          "TFLOP/s", "MFU", "compile s", "eval ex/s", "peak MiB")


def table_row(result: dict[str, Any]) -> tuple[str, ...]:
  """The printed (and reported) figures of one result."""
  train, evaluation = result["train"], result["eval"]
  kwargs = result["model_kwargs"]
  if result["seq_len"]:
    config = (f"T={result['seq_len']} H={kwargs['features']} L={kwargs['num_layers']} "
              + ("LN" if kwargs["layer_norm"] else "no LN")
              + (f" unroll={kwargs['unroll']}" if kwargs.get("unroll", 1) > 1 else ""))
  else:
    config = "x".join(str(d) for d in result["input_shape"])
  memory = result["peak_bytes_in_use"]
  return (
      result["model"], config, result["dtype"], f"{result['parallelism']} x{result['num_devices']}",
      str(result["batch_size"]),
      f"{train['examples_per_s']['median']:,.1f} ±{50 * train['examples_per_s']['spread']:.0f}%",
      f"{train['tokens_per_s']['median']:,.0f}" if train["tokens_per_s"] else "-",
      f"{train['step_time_ms']['median']:.2f}",
      f"{train['tflops_per_s']:.3f}" if train["tflops_per_s"] else "-",
      f"{100 * train['mfu']:.1f}%" if train.get("mfu") else "-",
      f"{train['compile_s']:.1f}",
      f"{evaluation['examples_per_s']['median']:,.1f}" if evaluation else "-",
      f"{memory / 2**20:,.0f}" if memory else "-",
  )


def _print_row(cells) -> None:
  print(" | ".join(cells), flush=True)


def main(argv: list[str] | None = None) -> int:
  options = parse_args(argv)
  runs = expand(options)
  if len(runs) > 1 and options.output.endswith(".json"):
    raise SystemExit(f"--output={options.output} names one file, but {len(runs)} workloads "
                     "would run: give a directory.")
  if options.header:
    _print_row(HEADER)
  if len(runs) > 1:
    failed = []
    for run in runs:
      child = _argv(dataclasses.replace(run, header=False))
      if subprocess.run([sys.executable, "-m", "bench.throughput", *child]).returncode:
        failed.append(run.model + ("" if run.model not in SEQUENCE_MODELS else
                                   f" (layer_norm={run.layer_norm})"))
    if failed:
      print(f"Failed: {', '.join(failed)}.", file=sys.stderr)
    return 1 if failed else 0

  (options,) = runs
  workload = make_workload(options.model, options, options.layer_norm != "false")
  result = benchmark(workload, options)
  result["command"] = command(options, workload)
  path = output_path(result, options.output)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  _print_row(table_row(result))
  reference = result.get("cudnn_lstm", {})
  if "train" in reference:
    tokens = reference["train"]["tokens_per_s"]["median"]
    ratio = tokens / result["train"]["tokens_per_s"]["median"]
    print(f"  cuDNN LSTM reference (float32): {tokens:,.0f} train tokens/s; our time per token "
          f"is {ratio:.2f}x its", flush=True)
  elif reference:
    print(f"  cuDNN LSTM reference: {reference.get('skipped') or reference.get('error')}",
          flush=True)
  print(f"  wrote {path}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
