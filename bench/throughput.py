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

The parts: `bench.workloads` (what is built: a real trainer config per model),
`bench.timing` (compile, time, FLOPs, MFU), `bench.cudnn` (the cuDNN LSTM
reference), `bench.tables` (file names and table rows). Imports no TensorFlow:
it runs where jax, flax, optax and ml_collections are installed.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from typing import Any

import jax

from bench import cudnn
from bench import host
from bench import tables
from bench import timing
from bench.workloads import Options, SEQUENCE_MODELS, Workload, family, make_workload
import resnet_ln
from resnet_ln.models import list_models
from resnet_ln.train import build
from resnet_ln.train import parallel as parallel_lib


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
  parallel.check_batch_size(workload.batch_size, "batch_size (--batch-size)")
  model = build.create_model(workload.config(options.dtype, options.seed), workload.info)
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
      "input_shape": list(workload.info.example_shape),
      "seq_len": workload.seq_len,
      "optimizer": workload.optimizer,
      "steps_per_window": options.steps,
      "windows": options.windows,
      "warmup_steps": options.warmup,
      "batches_in_rotation": timing.NUM_BATCHES,
  }
  result.update(timing.measure(model, workload, parallel, options, options.dtype))
  result["peak_bytes_in_use"] = timing.peak_bytes_in_use(parallel.devices)
  result["peak_bytes_note"] = "max over devices of the allocator's peak since the process started"
  if workload.model == "char_lm" and options.cudnn_reference:
    result["cudnn_lstm"] = cudnn.cudnn_reference(workload, parallel, options)

  # Last, so that its buffers do not count in the model's peak memory.
  size = options.peak_size or (1024 if jax.default_backend() == "cpu" else 8192)
  result["peak_matmul"] = timing.peak_matmul(options.dtype, size, parallel.devices[0])
  result["mfu_note"] = (f"achieved TFLOP/s / ({num_devices} x the best single-device matmul rate "
                        "in the same dtype, measured in this run)")
  timing.set_mfu(result, result["peak_matmul"], num_devices)
  reference = result.get("cudnn_lstm", {})
  if "train" in reference:
    # The cuDNN LSTM runs in float32 whatever --dtype is: its own peak.
    if reference["dtype"] != options.dtype:
      reference["peak_matmul"] = timing.peak_matmul(reference["dtype"], size,
                                                    parallel.devices[0])
    timing.set_mfu(reference, reference.get("peak_matmul", result["peak_matmul"]), num_devices)
  return result


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
  parser.add_argument("--dtype", choices=sorted(build.DTYPES), default=defaults.dtype)
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
        family(name)
      except ValueError:
        print(f"Skipping {name}: no benchmark workload for it.", file=sys.stderr)
        continue
      models.append(name)
  else:
    models = [m.strip() for m in options.model.split(",") if m.strip()]
  runs = []
  for name in models:
    family(name)
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
                                   image_size=workload.info.example_shape[0], layer_norm="both")
  line = shlex.join(["python", "-m", "bench.throughput",
                     *_argv(dataclasses.replace(resolved, header=True, output=""), explicit)])
  flags = os.environ.get("XLA_FLAGS", "").strip()
  return f"XLA_FLAGS={shlex.quote(flags)} {line}" if flags else line


def _print_row(cells) -> None:
  print(" | ".join(cells), flush=True)


def main(argv: list[str] | None = None) -> int:
  options = parse_args(argv)
  runs = expand(options)
  if len(runs) > 1 and options.output.endswith(".json"):
    raise SystemExit(f"--output={options.output} names one file, but {len(runs)} workloads "
                     "would run: give a directory.")
  if options.header:
    _print_row(tables.HEADER)
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
  path = tables.output_path(result, options.output)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  _print_row(tables.table_row(result))
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
