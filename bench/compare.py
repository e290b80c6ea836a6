"""resnet_ln's train and eval steps side by side with PyTorch's and other JAX choices.

  python -m bench.compare                                   # the five workloads below
  python -m bench.compare --workloads resnet50 --rounds 5 --steps 3
  python -m bench.compare --workloads char_lm_lnlstm --seq-len 16 --features 32

Workloads (float32 on CPU, bfloat16 on a GPU; `--batch-size`, `--image-size`,
`--seq-len`, `--features`, `--num-layers` change the sizes):

  cifar_resnet20   batch 64, 32x32       SGD momentum 0.9 + weight decay 1e-4
  resnet18         batch 16, 112x112     (the trainer's configs/imagenet.py fields)
  resnet50         batch 8, 224x224
  char_lm_lstm     plain LSTM 1x256, batch 32 x 128 steps, AdamW + clipping
  char_lm_lnlstm   LayerNorm LSTM 1x256, batch 32 x 128 steps

Contenders, each training the same model on the same batch with the same optimiser:

  resnet_ln       the trainer's own `steps.train_step` / `eval_step` under its pmap
                  (or shard_map) wrapper, with the model and optimiser the trainer
                  builds from a real config (`bench.workloads`)
  xla_conv        the same resnet_ln step with every convolution XLA's own
                  (`lax.conv_general_dilated`), CPU only: what the CPU path of
                  `resnet_ln.models.convolution` (1x1 kernels as matmuls) gains
  flax_lstm       char LM on `nn.RNN(nn.OptimizedLSTMCell)`, flax's own LSTM, in the
                  same trainer step (plain LSTM workload)
  jax_cudnn       char LM on `jax.experimental.rnn`'s cuDNN LSTM (`bench.cudnn`),
                  float32, no LayerNorm; GPU only
  torch           PyTorch eager: torchvision-layout ResNets in channels_last,
                  `nn.LSTM` (cuDNN's on a GPU); bfloat16 autocast on a GPU
  torch_script    the LN-LSTM char LM, its layer scripted with TorchScript (PyTorch
                  has no LayerNorm LSTM)
  torch_cudnn     `nn.LSTM` beside the LN-LSTM on a GPU: cuDNN's speed without LN
  torch_compile   `torch` under `torch.compile` (GPU by default: --torch-compile)

Timing: every contender is built, compiled and warmed up first; then, for
`--rounds` rounds, each runs `--steps` train steps (then eval steps) in turn, the
order rotating every round, each run ending when its device work is done. A busy
machine slows every framework in the same round alike, so the figure that
matters is the ratio, resnet_ln's time over the other's, per round, and its
median over rounds (< 1: resnet_ln is faster). A contender that fails (build,
compile or a round) is recorded with its error and dropped; the others go on.
Each workload writes one JSON file (`"benchmark": "compare"`, bench/results/ by
default), rewritten after every round so a crash keeps what was measured;
`python -m bench.report` tables them. PyTorch is an optional dependency: without
it this says so and exits with status 2. The exit status is 1 when any contender
failed. On a CPU, PyTorch's OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE
unless set): spinning threads stall every step on a shared host.
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
import sys
import time
import traceback
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from bench import cudnn
from bench import host
from bench import tables
from bench import timing
from bench.workloads import Options, Workload, make_workload
from resnet_ln.train import build
from resnet_ln.train import parallel as parallel_lib

OURS = "resnet_ln"


@dataclasses.dataclass(frozen=True)
class Spec:
  """A workload's default sizes: the model and what `Options` it takes."""

  model: str
  batch_size: int
  image_size: int = 0
  layer_norm: bool = True


WORKLOADS = {
    "cifar_resnet20": Spec("cifar_resnet20", 64, image_size=32),
    "resnet18": Spec("resnet18", 16, image_size=112),
    "resnet50": Spec("resnet50", 8, image_size=224),
    "char_lm_lstm": Spec("char_lm", 32, layer_norm=False),
    "char_lm_lnlstm": Spec("char_lm", 32, layer_norm=True),
}
TORCH_AUTOCAST = {"bfloat16": "bfloat16", "float16": "float16"}


@dataclasses.dataclass(frozen=True)
class Contender:
  """One implementation of a workload's step.

  Attributes:
    name: the short name in tables and JSON.
    framework: 'jax' or 'torch'.
    description: what exactly runs.
    build: builds, returns (train(n), evaluate(n)): each runs n steps and waits for them.
    skipped: why it does not run here (then `build` is None).
  """

  name: str
  framework: str
  description: str
  build: Callable[[], tuple[Callable[[int], None], Callable[[int], None]]] | None
  skipped: str | None = None


# ----------------------------------------------------------------------------
# JAX contenders: the trainer's steps, with its model or another one.
# ----------------------------------------------------------------------------
class FlaxLSTMCharLM(nn.Module):
  """`char_lm`'s shapes on flax's own LSTM: embedding, `nn.RNN(nn.OptimizedLSTMCell)` stack, projection."""

  vocab_size: int
  embed_dim: int
  features: int
  num_layers: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    """Next-token logits, [batch, time, vocab_size] float32, from tokens [batch, time]."""
    x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype)(tokens)
    for _ in range(self.num_layers):
      x = nn.RNN(nn.OptimizedLSTMCell(self.features, dtype=self.dtype))(x)
    return nn.Dense(self.vocab_size, dtype=self.dtype)(x).astype(jnp.float32)


def jax_steps(model_fn: Callable, workload: Workload, dtype: str, parallelism: str, seed: int):
  """(train(n), evaluate(n)) of the trainer's steps on `model_fn(config)`, as `timing.measure` builds them."""
  parallel = parallel_lib.create_parallelism(parallelism, 1)
  setup = timing.trainer_steps(model_fn(workload.config(dtype, seed)), workload, parallel,
                               dtype, seed)
  state, batches, eval_batches = setup.state, setup.batches, setup.eval_batches
  # Compiled ahead of time, as `timing.measure` does: a jitted pmap would compile a
  # second time when it first meets a state it returned itself.
  train_loop = timing.TrainLoop(setup.train_step.lower(state, batches[0]).compile(), state,
                                batches)
  eval_step = setup.eval_step.lower(state, eval_batches[0]).compile()

  def train(n):
    jax.block_until_ready(train_loop(n))

  def evaluate(n):
    jax.block_until_ready([eval_step(train_loop.state, eval_batches[i % len(eval_batches)])
                           for i in range(n)])

  return train, evaluate


# ----------------------------------------------------------------------------
# PyTorch contenders.
# ----------------------------------------------------------------------------
def torch_device():
  """cuda where both JAX and PyTorch see a GPU, else the CPU."""
  import torch  # pylint: disable=g-import-not-at-top
  gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
  return torch.device("cuda" if gpu else "cpu")


def torch_steps(workload: Workload, dtype: str, seed: int, compile_model: bool = False,
                script: bool = True, layer_norm: bool | None = None):
  """(train(n), evaluate(n)) of the PyTorch model, optimiser and steps of `workload`."""
  import torch  # pylint: disable=g-import-not-at-top
  from bench import torch_reference  # pylint: disable=g-import-not-at-top

  device = torch_device()
  if device.type == "cuda":
    # cuDNN picks its convolution algorithms by timing them, as XLA's autotuner does.
    torch.backends.cudnn.benchmark = True
  torch.manual_seed(seed)
  info = workload.info
  if workload.seq_len is None:
    model = torch_reference.resnet(workload.model, info.num_classes)
    model = model.to(device, memory_format=torch.channels_last)
  else:
    kwargs = dict(workload.model_kwargs)
    if layer_norm is not None:
      kwargs["layer_norm"] = layer_norm
    model = torch_reference.char_lm(kwargs, script=script).to(device)
  opt = torch_reference.optimizer(model.parameters(), workload.optimizer)
  if compile_model:
    model = torch.compile(model)
  autocast = getattr(torch, TORCH_AUTOCAST[dtype]) if dtype in TORCH_AUTOCAST else None
  train_step, eval_step = torch_reference.make_steps(
      model, opt, workload.optimizer.get("grad_clip_norm", 0.0), autocast, device)

  generator = torch.Generator(device=device).manual_seed(seed + 1)
  batches = []
  for _ in range(timing.NUM_BATCHES):
    if workload.seq_len is None:
      size, _, channels = info.example_shape
      images = torch.randn(workload.batch_size, channels, size, size, device=device,
                           generator=generator).contiguous(memory_format=torch.channels_last)
      labels = torch.randint(0, info.num_classes, (workload.batch_size,), device=device,
                             generator=generator)
      batches.append((images, labels))
    else:
      tokens = torch.randint(0, info.num_classes, (workload.batch_size, workload.seq_len + 1),
                             device=device, generator=generator)
      batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
  sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
  position = 0

  def train(n):
    nonlocal position
    for _ in range(n):
      train_step(*batches[position % len(batches)])
      position += 1
    sync()

  def evaluate(n):
    for i in range(n):
      eval_step(*batches[i % len(batches)])
    sync()

  return train, evaluate


def xla_convolution_model(model_fn: Callable) -> Callable:
  """`model_fn`'s ResNet with XLA's convolution in every layer (no 1x1 matmuls on CPU)."""
  return lambda config: model_fn(config).clone(conv_general_dilated=lax.conv_general_dilated)


def contenders(workload: Workload, dtype: str, parallelism: str, seed: int,
               torch_compile: str) -> list[Contender]:
  """Every implementation of `workload` to time on this device (some recorded as skipped)."""
  gpu = torch_device().type == "cuda"
  on = "bfloat16 autocast, " if dtype in TORCH_AUTOCAST else ""
  where = "cuda" if gpu else "cpu"
  compile_skip = None
  if torch_compile == "off" or (torch_compile == "auto" and not gpu):
    compile_skip = f"--torch-compile={torch_compile}" + (" (auto: GPU only)" if not gpu else "")
  ours = functools.partial(build.create_model, info=workload.info)
  result = [Contender(OURS, "jax", f"resnet_ln {workload.model}: the trainer's train_step/"
                      f"eval_step under {parallelism}, {dtype}",
                      lambda: jax_steps(ours, workload, dtype, parallelism, seed))]
  torch_build = functools.partial(torch_steps, workload, dtype, seed)
  if workload.seq_len is None:
    result.append(Contender("torch", "torch", f"torchvision-layout {workload.model}, eager, "
                            f"{on}channels_last, {where}", torch_build))
    result.append(Contender("torch_compile", "torch", f"the same under torch.compile, {where}",
                            None if compile_skip else functools.partial(
                                torch_build, compile_model=True), compile_skip))
    cpu = jax.default_backend() == "cpu"
    result.append(Contender("xla_conv", "jax", f"resnet_ln {workload.model}, the same step "
                            f"with XLA's convolution for every layer, {dtype}",
                            (lambda: jax_steps(xla_convolution_model(ours), workload, dtype,
                                               parallelism, seed)) if cpu else None,
                            None if cpu else "CPU only: elsewhere resnet_ln's convolutions "
                            "are XLA's already"))
    return result

  kwargs = workload.model_kwargs
  cudnn_skip = cudnn.cudnn_skip_reason()
  cudnn_model = lambda config: cudnn.CudnnCharLM(kwargs["vocab_size"], kwargs["embed_dim"],
                                                 kwargs["features"], kwargs["num_layers"])
  cudnn_workload = dataclasses.replace(workload, model_kwargs={**kwargs, "layer_norm": False})
  jax_cudnn = Contender(
      "jax_cudnn", "jax", "jax.experimental.rnn cuDNN LSTM char LM in the trainer's step, "
      "float32, no LayerNorm",
      None if cudnn_skip else lambda: jax_steps(cudnn_model, cudnn_workload, "float32",
                                                parallelism, seed), cudnn_skip)
  if kwargs["layer_norm"]:
    result.append(Contender("torch_script", "torch", f"TorchScript LN-LSTM layer (the paper's "
                            f"equations), {on}{where}", torch_build))
    result.append(jax_cudnn)
    result.append(Contender("torch_cudnn", "torch", f"nn.LSTM (cuDNN), no LayerNorm, {on}cuda",
                            functools.partial(torch_build, layer_norm=False) if gpu else None,
                            None if gpu else "cuDNN needs a GPU"))
    return result
  flax_model = lambda config: FlaxLSTMCharLM(kwargs["vocab_size"], kwargs["embed_dim"],
                                             kwargs["features"], kwargs["num_layers"],
                                             build.DTYPES[dtype])
  result.append(Contender("flax_lstm", "jax", f"nn.RNN(nn.OptimizedLSTMCell) char LM in the "
                          f"trainer's step, {dtype}",
                          lambda: jax_steps(flax_model, workload, dtype, parallelism, seed)))
  result.append(jax_cudnn)
  result.append(Contender("torch", "torch", f"nn.LSTM{' (cuDNN)' if gpu else ''}, eager, "
                          f"{on}{where}", torch_build))
  result.append(Contender("torch_compile", "torch", f"nn.LSTM under torch.compile, {where}",
                          None if compile_skip else functools.partial(
                              torch_build, compile_model=True), compile_skip))
  return result


# ----------------------------------------------------------------------------
# Rounds.
# ----------------------------------------------------------------------------
def _error(error: BaseException) -> str:
  return f"{type(error).__name__}: {error}".strip()[:2000]


def _median_ms(seconds: list[float], steps_per_round: int) -> float | None:
  return 1e3 * statistics.median(seconds) / steps_per_round if seconds else None


def summarize(result: dict[str, Any]) -> None:
  """Per-step medians, ratios to resnet_ln per round and their medians, and the table cells."""
  entries, n = result["contenders"], result["steps_per_round"]
  for entry in entries.values():
    for phase in ("train", "eval"):
      entry[f"{phase}_ms"] = _median_ms(entry[f"{phase}_s"], n)
  ours = entries[OURS]
  ratios = {}
  for name, entry in entries.items():
    if name == OURS:
      continue
    ratios[name] = {}
    for phase in ("train", "eval"):
      per_round = [a / b for a, b in zip(ours[f"{phase}_s"], entry[f"{phase}_s"])]
      ratios[name][phase] = statistics.median(per_round) if per_round else None
      ratios[name][f"{phase}_per_round"] = per_round
  result["ratios"] = ratios
  result["details"]["ratio_note"] = ("resnet_ln's step time / the other's, per round (the same round ran "
                          "both under the same load), median over rounds: < 1 means resnet_ln "
                          "is faster")
  fmt = lambda v, f: "-" if v is None else format(v, f)
  result[f"{OURS}_train_ms"] = ours["train_ms"]
  result[f"{OURS}_eval_ms"] = ours["eval_ms"]
  timed = [k for k, e in entries.items() if k != OURS and e["train_s"]]
  result["others_train_ms"] = "; ".join(f"{k} {fmt(entries[k]['train_ms'], '.1f')}"
                                        for k in timed) or None
  for phase in ("train", "eval"):
    result[f"ours_over_theirs_{phase}"] = "; ".join(
        f"{k} {fmt(ratios[k][phase], '.2f')}x" for k in timed) or None
  failed = [f"{k}: {e['error'][:150]}" for k, e in entries.items() if e["status"] == "failed"]
  result["failed"] = "; ".join(failed) or None


def run_rounds(result: dict[str, Any], candidates: list[Contender], rounds: int,
               steps_per_round: int, warmup: int, save: Callable[[], None]) -> None:
  """Builds and warms up every contender, then times them in rotating rounds; fills `result`."""
  entries = result["contenders"]
  runners = {}
  for c in candidates:
    entry = entries[c.name] = {"framework": c.framework, "description": c.description,
                               "status": "skipped" if c.skipped else "pending",
                               "train_s": [], "eval_s": []}
    if c.skipped:
      entry["skipped"] = c.skipped
      continue
    start = time.perf_counter()
    try:
      train, evaluate = c.build()
      train(warmup)  # Compiles (JAX, torch.compile) and warms up.
      evaluate(warmup)
    except Exception as error:  # pylint: disable=broad-except
      # One framework's failure must never cost the others their figures.
      entry.update(status="failed", error=_error(error), failed_in="build and warm-up",
                   traceback=traceback.format_exc()[-4000:])
      print(f"  {c.name}: failed to build or warm up: {_error(error)[:300]}", flush=True)
      continue
    entry["setup_s"] = time.perf_counter() - start
    entry["status"] = "ok"
    runners[c.name] = {"train": train, "eval": evaluate}
    save()  # A slow build (torch.compile) killed by a timeout keeps the ones before it.
  save()
  for r in range(rounds):
    names = list(runners)
    order = names[r % len(names):] + names[:r % len(names)] if names else []
    for phase in ("train", "eval"):
      for name in order:
        if name not in runners:
          continue
        start = time.perf_counter()
        try:
          runners[name][phase](steps_per_round)
        except Exception as error:  # pylint: disable=broad-except
          entries[name].update(status="failed", error=_error(error),
                               failed_in=f"round {r} {phase}",
                               traceback=traceback.format_exc()[-4000:])
          print(f"  {name}: failed in round {r} ({phase}): {_error(error)[:300]}", flush=True)
          del runners[name]
          continue
        entries[name][f"{phase}_s"].append(time.perf_counter() - start)
    result["host_load_avg_1m_rounds"].append(host.load_average())
    result["rounds_done"] = r + 1
    summarize(result)
    save()


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m bench.compare",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--workloads", default="all",
                      help=f"comma-separated from {', '.join(WORKLOADS)}; or 'all'")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds (frameworks alternate)")
  parser.add_argument("--steps", type=int, default=3, help="steps per contender per round")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--dtype", choices=("auto", *sorted(build.DTYPES)), default="auto",
                      help="auto: float32 on CPU, bfloat16 on accelerators")
  parser.add_argument("--model", default="",
                      help="another ResNet for the image workloads (e.g. cifar_resnet8 for a "
                           "quick check); default: each workload's own")
  parser.add_argument("--batch-size", type=int, default=0, help="0: each workload's own")
  parser.add_argument("--image-size", type=int, default=0, help="0: each workload's own")
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--embed-dim", type=int, default=64)
  parser.add_argument("--features", type=int, default=256, help="LSTM hidden size")
  parser.add_argument("--num-layers", type=int, default=1)
  parser.add_argument("--parallelism", choices=parallel_lib.PARALLELISMS, default="pmap",
                      help="resnet_ln's wrapper (one device)")
  parser.add_argument("--torch-compile", choices=("auto", "on", "off"), default="auto",
                      help="also time torch.compile; auto: on a GPU only")
  parser.add_argument("--torch-threads", type=int, default=0,
                      help="torch.set_num_threads; 0: PyTorch's default (the cores)")
  parser.add_argument("--only", default="",
                      help="comma-separated contenders to run (resnet_ln always runs)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default="", help="directory for the JSON files (bench/results)")
  args = parser.parse_args(argv)
  names = list(WORKLOADS) if args.workloads == "all" else [
      w.strip() for w in args.workloads.split(",") if w.strip()]
  unknown = [w for w in names if w not in WORKLOADS]
  if unknown or not names:
    parser.error(f"--workloads={args.workloads!r}: unknown {unknown}; "
                 f"choose from {', '.join(WORKLOADS)} or 'all'.")
  args.workloads = names
  for name in ("rounds", "steps", "warmup"):
    if getattr(args, name) < (0 if name == "warmup" else 1):
      parser.error(f"--{name} must be positive, got {getattr(args, name)}.")
  if args.dtype == "auto":
    args.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return args


def workload_of(name: str, args: argparse.Namespace) -> Workload:
  """The `bench.workloads` workload of a compare workload name at the sizes `args` ask for."""
  spec = WORKLOADS[name]
  if args.model and spec.model != "char_lm":
    spec = dataclasses.replace(spec, model=args.model)
  options = Options(model=spec.model, batch_size=args.batch_size or spec.batch_size,
                    image_size=args.image_size or spec.image_size, seq_len=args.seq_len,
                    embed_dim=args.embed_dim, features=args.features,
                    num_layers=args.num_layers)
  return make_workload(spec.model, options, spec.layer_norm)


def command(name: str, workload: Workload, args: argparse.Namespace) -> str:
  """The command line that reruns this one workload, every size spelled out."""
  flags = ["--workloads", name] + (["--model", workload.model] if args.model and
                                    workload.seq_len is None else [])
  flags += ["--rounds", args.rounds, "--steps", args.steps,
           "--warmup", args.warmup, "--dtype", args.dtype, "--batch-size", workload.batch_size]
  if workload.seq_len is None:
    flags += ["--image-size", workload.info.example_shape[0]]
  else:
    flags += ["--seq-len", args.seq_len, "--embed-dim", args.embed_dim,
              "--features", args.features, "--num-layers", args.num_layers]
  if args.parallelism != "pmap":
    flags += ["--parallelism", args.parallelism]
  if args.torch_compile != "auto":
    flags += ["--torch-compile", args.torch_compile]
  if args.torch_threads:
    flags += ["--torch-threads", args.torch_threads]
  if args.only:
    flags += ["--only", args.only]
  line = shlex.join(["python", "-m", "bench.compare", *map(str, flags)])
  xla_flags = os.environ.get("XLA_FLAGS", "").strip()
  return f"XLA_FLAGS={shlex.quote(xla_flags)} {line}" if xla_flags else line


def describe(workload: Workload) -> str:
  if workload.seq_len is None:
    return "x".join(map(str, workload.info.example_shape))
  kwargs = workload.model_kwargs
  return (f"T={workload.seq_len} H={kwargs['features']} L={kwargs['num_layers']} "
          + ("LN" if kwargs["layer_norm"] else "no LN"))


def compare(name: str, args: argparse.Namespace) -> dict[str, Any]:
  """Times one workload's contenders in rounds; the result, also written to its JSON file."""
  import torch  # pylint: disable=g-import-not-at-top

  workload = workload_of(name, args)
  device = jax.devices()[0]
  date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  result = {
      "benchmark": "compare",
      "date": date,
      "workload": name,
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "host_cpu": host.cpu_model(),
      "host_cpu_count": os.cpu_count(),
      "host_load_avg_1m": host.load_average(),
      "host_load_avg_1m_end": None,
      "dtype": args.dtype,
      "batch_size": workload.batch_size,
      "input": describe(workload),
      "rounds": args.rounds,
      "steps_per_round": args.steps,
      f"{OURS}_train_ms": None, f"{OURS}_eval_ms": None,
      "others_train_ms": None, "ours_over_theirs_train": None, "ours_over_theirs_eval": None,
      "failed": None,
      "jax_version": jax.__version__,
      "torch_version": torch.__version__,
      "git_commit": host.git_commit(),
      "command": command(name, workload, args),
      "rounds_done": 0,
      # Below: not scalars, so `bench.report` leaves them out of its table.
      "details": {
          "model": workload.model,
          "model_kwargs": workload.model_kwargs,
          "optimizer": workload.optimizer,
          "warmup_steps": args.warmup,
          "torch_threads": torch.get_num_threads(),
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
          "python_version": platform.python_version(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
      },
      "host_load_avg_1m_rounds": [],
      "contenders": {},
  }
  stamp = re.sub(r"[-:]", "", date)[:15]
  slug = re.sub(r"[^a-z0-9]+", "-", device.device_kind.lower()).strip("-")
  path = os.path.join(args.output or tables.RESULTS_DIR,
                      f"compare_{slug}_{name}_{args.dtype}_b{workload.batch_size}_{stamp}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)

  def save():
    with open(path, "w") as f:
      json.dump(result, f, indent=2)
      f.write("\n")

  only = {c.strip() for c in args.only.split(",") if c.strip()}
  candidates = [c for c in contenders(workload, args.dtype, args.parallelism, args.seed,
                                      args.torch_compile)
                if not only or c.name == OURS or c.name in only]
  print(f"{name}: {workload.model} {describe(workload)}, batch {workload.batch_size}, "
        f"{args.dtype}, {result['backend']} ({device.device_kind}); {args.rounds} rounds x "
        f"{args.steps} steps; load {result['host_load_avg_1m']}", flush=True)
  run_rounds(result, candidates, args.rounds, args.steps, args.warmup, save)
  if "ratios" not in result:  # No contender got through its build.
    summarize(result)
  result["host_load_avg_1m_end"] = host.load_average()
  save()
  result["path"] = path
  print_workload(result)
  return result


def print_workload(result: dict[str, Any]) -> None:
  """The workload's contenders: ms per step and resnet_ln's time over theirs."""
  fmt = lambda v, f: "-" if v is None else format(v, f)
  print(f"  {'contender':<14} {'train ms':>10} {'eval ms':>10} {'ours/theirs train':>18} "
        f"{'eval':>6}  status", flush=True)
  for name, entry in result["contenders"].items():
    ratio = result["ratios"].get(name, {})
    status = entry["status"] if entry["status"] != "skipped" else f"skipped: {entry['skipped']}"
    if entry["status"] == "failed":
      status = f"failed ({entry['failed_in']}): {entry['error'][:120]}"
    times = [fmt(entry.get(f"{phase}_ms"), ".1f") for phase in ("train", "eval")]
    ratios = [fmt(ratio.get(phase), ".2f") + ("x" if ratio.get(phase) else "")
              for phase in ("train", "eval")]
    print(f"  {name:<14} {times[0]:>10} {times[1]:>10} {ratios[0]:>18} {ratios[1]:>6}  {status}",
          flush=True)
  print(f"  load {result['host_load_avg_1m']} -> {result['host_load_avg_1m_end']}; "
        f"wrote {result['path']}", flush=True)


def main(argv: list[str] | None = None) -> int:
  # Both frameworks share the accelerator: JAX must not take 75% of its memory up front.
  # Set before parse_args initialises JAX's backends; recorded in the JSON.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  args = parse_args(argv)
  if jax.default_backend() == "cpu":
    # PyTorch's OpenMP threads spin at every barrier by default; on a CPU that
    # other jobs share, a descheduled spinner stalls the whole step (up to 30x
    # here). Set before torch loads OpenMP; recorded in the JSON.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    print(f"bench.compare needs PyTorch, an optional benchmark dependency that is not installed "
          f"here ({error}): `pip install torch` (and torchvision if you like), then rerun.",
          file=sys.stderr)
    return 2
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  results = []
  for name in args.workloads:
    try:
      results.append(compare(name, args))
    except Exception as error:  # pylint: disable=broad-except
      print(f"{name}: failed before timing: {_error(error)}", file=sys.stderr, flush=True)
      traceback.print_exc()
      results.append({"workload": name, "failed": _error(error), "contenders": {}})
  print("\nresnet_ln step time / the other's (median over rounds of the per-round ratio; "
        "< 1: resnet_ln faster)", flush=True)
  for result in results:
    print(f"  {result['workload']:<16} train: {result.get('ours_over_theirs_train') or '-'}"
          f" | eval: {result.get('ours_over_theirs_eval') or '-'}", flush=True)
  failed = [r["workload"] for r in results
            if r.get("failed") or any(e["status"] == "failed" for e in r["contenders"].values())]
  if failed:
    print(f"Failures recorded in: {', '.join(failed)}.", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
