"""Examples per second per CPU core of the ImageNet train input pipeline, on generated JPEGs.

  python -m bench.input_pipeline                  # All the cores this process may use.
  python -m bench.input_pipeline --cores 1        # Pinned to one core: the per-core figure.
  python -m bench.input_pipeline --cores 8 --num-images 1024 --batch-size 256

Runs the trainer's own per-example work for `imagenet2012` training: JPEG
decode of the crop window, inception-style random-resized crop, horizontal flip,
resize to --image-size (`preprocess.preprocess_image`, seeded per example as in
`pipeline.create_train_iterator`), then batching, per-channel normalisation and
the numpy hand-off (`pipeline.finish_batches`). The JPEGs are generated at
ImageNet-like sizes (333..375 x 400..500 pixels, a quarter of them portrait) and
about ImageNet's mean file size (~110 KB), and are held in memory: file reads
and TFRecord parsing are not timed. With --cores N the process is pinned to N
cores (Linux) and tf.data gets N threads.

Two figures: examples/s of wall-clock time divided by the cores (what a
dedicated host delivers), and examples per CPU-second the process consumed
(the same on an idle host; the fairer one on a host shared with other work).

Divide an accelerator's training examples/s (`bench.throughput`) by the
per-core figure to get the host cores that keep it fed. Writes one JSON file
(bench/results/ by default); `python -m bench.report` tables it.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from typing import Any

import numpy as np

from bench import host

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DATASET = "imagenet2012"
# ImageNet's training JPEGs average ~110 KB at about 400x350: a smooth random
# field plus this much pixel noise, at this quality, compresses to about that.
_NOISE_STD = 28.0
_JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class Options:
  """What to run; the command-line flags."""

  cores: int = 0  # 0: every core this process may use.
  num_images: int = 256  # Distinct JPEGs, cycled through.
  batch_size: int = 128
  image_size: int = 224
  warmup: int = 10  # Untimed batches first (tf.data's autotuning settles).
  batches: int = 10  # Per timed window.
  windows: int = 5
  seed: int = 0
  output: str = ""  # A .json path, or a directory for auto-named files.


def generate_jpegs(num_images: int, seed: int) -> list[bytes]:
  """`num_images` JPEGs of ImageNet-like sizes and file sizes."""
  from resnet_ln.data.cpu_tensorflow import tf  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  jpegs = []
  for _ in range(num_images):
    height, width = int(rng.integers(333, 376)), int(rng.integers(400, 501))
    if rng.random() < 0.25:
      height, width = width, height
    coarse = rng.uniform(0, 255, (height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    pixels = tf.image.resize(coarse[None], [height, width], "bicubic")[0].numpy()
    pixels += rng.normal(0, _NOISE_STD, pixels.shape)
    jpegs.append(tf.io.encode_jpeg(np.clip(pixels, 0, 255).astype(np.uint8),
                                   quality=_JPEG_QUALITY).numpy())
  return jpegs


def train_batches(jpegs: list[bytes], options: Options, threads: int):
  """The ImageNet train pipeline over `jpegs`, repeated: a numpy iterator of batches."""
  # pylint: disable=import-outside-toplevel
  from resnet_ln.data import pipeline
  from resnet_ln.data import preprocess
  from resnet_ln.data.cpu_tensorflow import tf

  base_seed = tf.constant([options.seed, 0], tf.int64)

  def augment(position, image_bytes):
    seed = tf.random.experimental.stateless_fold_in(base_seed, position)
    image = preprocess.preprocess_image(DATASET, image_bytes, seed, image_shape=(None, None, 3),
                                        image_size=options.image_size, augment=True)
    return {"image": image, "label": tf.constant(0, tf.int32)}

  batches = (tf.data.Dataset.from_tensor_slices(jpegs).repeat().enumerate()
             .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
             .batch(options.batch_size, drop_remainder=True))
  threading = tf.data.Options()
  threading.threading.private_threadpool_size = threads
  return pipeline.finish_batches(batches.with_options(threading), DATASET)


def _pin(cores: int) -> tuple[int, set[int] | None]:
  """Restricts this process to `cores` of its CPUs (0: all): (cores, the previous set)."""
  if not hasattr(os, "sched_setaffinity"):
    return cores or os.cpu_count(), None
  allowed = os.sched_getaffinity(0)
  if cores > len(allowed):
    raise ValueError(f"--cores={cores}, but this process may use only {len(allowed)} cores.")
  if not cores or cores == len(allowed):
    return len(allowed), None
  os.sched_setaffinity(0, sorted(allowed)[:cores])
  return cores, allowed


def measure(options: Options) -> dict[str, Any]:
  """Generates the JPEGs, then times `options.windows` windows of the pipeline."""
  cores, previous = _pin(options.cores)
  try:
    jpegs = generate_jpegs(options.num_images, options.seed)
    iterator = train_batches(jpegs, options, cores)
    for _ in range(options.warmup):
      next(iterator)
    rates, cpu_seconds = [], time.process_time()
    for _ in range(options.windows):
      start = time.perf_counter()
      for _ in range(options.batches):
        batch = next(iterator)
      rates.append(options.batches * options.batch_size / (time.perf_counter() - start))
    cpu_seconds = time.process_time() - cpu_seconds
  finally:
    if previous is not None:
      os.sched_setaffinity(0, previous)
  assert batch["image"].shape == (options.batch_size, options.image_size, options.image_size, 3)
  sizes = [len(j) for j in jpegs]
  median = statistics.median(rates)
  return {
      "cores": cores,
      "examples_per_s": median,
      "examples_per_s_per_core": median / cores,
      "examples_per_cpu_s": options.windows * options.batches * options.batch_size / cpu_seconds,
      "mean_jpeg_kb": statistics.mean(sizes) / 1e3,
      "examples_per_s_windows": rates,
  }


def command(options: Options, cores: int) -> str:
  """The command line that reruns this measurement, every size spelled out."""
  flags = ["--cores", str(cores)]
  for field in dataclasses.fields(Options):
    if field.name not in ("cores", "output"):
      flags += [f"--{field.name.replace('_', '-')}", str(getattr(options, field.name))]
  return shlex.join(["python", "-m", "bench.input_pipeline", *flags])


def benchmark(options: Options) -> dict[str, Any]:
  """Every figure of one run, as written to its JSON file."""
  figures = measure(options)
  return {
      "benchmark": "input_pipeline",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "pipeline": f"{DATASET} train: decode+crop, flip, resize {options.image_size}, normalise",
      "host_cpu": host.cpu_model(),
      "host_cpu_count": os.cpu_count(),
      # Other work on the host slows the wall-clock figures, not examples_per_cpu_s.
      "host_load_avg_1m": host.load_average(),
      "cores": figures["cores"],
      "examples_per_s": figures["examples_per_s"],
      "examples_per_s_per_core": figures["examples_per_s_per_core"],
      "examples_per_cpu_s": figures["examples_per_cpu_s"],
      "batch_size": options.batch_size,
      "num_images": options.num_images,
      "mean_jpeg_kb": figures["mean_jpeg_kb"],
      "timed_batches": options.windows * options.batches,
      "tensorflow_version": (host.package_version("tensorflow")
                             or host.package_version("tensorflow-cpu")),
      "git_commit": host.git_commit(),
      "python_version": platform.python_version(),
      "command": command(options, figures["cores"]),
      "examples_per_s_windows": figures["examples_per_s_windows"],
  }


def output_path(result: dict[str, Any], output: str) -> str:
  """`output` when it names a .json file, else an auto-named file in it (or bench/results)."""
  if output.endswith(".json"):
    return output
  stamp = re.sub(r"[-:]", "", result["date"])[:15]
  name = (f"input-pipeline_{DATASET}-train_{result['cores']}cores_b{result['batch_size']}_"
          f"{stamp}.json")
  return os.path.join(output or RESULTS_DIR, name)


def parse_args(argv: list[str] | None) -> Options:
  """Options from command-line flags (defaults from `Options`)."""
  defaults = Options()
  parser = argparse.ArgumentParser(prog="python -m bench.input_pipeline",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--cores", "--threads", type=int, default=defaults.cores,
                      help="pin to this many cores, one tf.data thread each; 0: all")
  parser.add_argument("--num-images", type=int, default=defaults.num_images,
                      help="distinct generated JPEGs, cycled through")
  parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
  parser.add_argument("--image-size", type=int, default=defaults.image_size)
  parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed batches first")
  parser.add_argument("--batches", type=int, default=defaults.batches, help="batches per window")
  parser.add_argument("--windows", type=int, default=defaults.windows)
  parser.add_argument("--seed", type=int, default=defaults.seed)
  parser.add_argument("--output", default=defaults.output,
                      help="a .json file, or a directory for auto-named files (bench/results)")
  args = parser.parse_args(argv)
  for name in ("num_images", "batch_size", "image_size", "batches", "windows"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
  if args.cores < 0 or args.warmup < 0:
    parser.error("--cores and --warmup must not be negative.")
  return Options(**vars(args))


def main(argv: list[str] | None = None) -> int:
  options = parse_args(argv)
  result = benchmark(options)
  path = output_path(result, options.output)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  print(f"{result['pipeline']}: {result['examples_per_s']:,.1f} examples/s on "
        f"{result['cores']} cores = {result['examples_per_s_per_core']:,.1f} per core; "
        f"{result['examples_per_cpu_s']:,.1f} per CPU-second ({result['host_cpu']}; "
        f"{options.num_images} JPEGs of {result['mean_jpeg_kb']:.0f} KB "
        f"on average). Wrote {path}.", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
