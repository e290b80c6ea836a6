"""Smoke test of `bench.input_pipeline`: it runs the ImageNet train pipeline, writes full JSON.

Timings never decide pass or fail: only that the figures exist and are positive.
"""

import json
import os

from bench import input_pipeline


def test_input_pipeline_bench_writes_positive_figures_and_its_command(tmp_path):
  output = tmp_path / "result.json"
  affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
  assert input_pipeline.main(["--cores", "1", "--num-images", "3", "--batch-size", "4",
                              "--image-size", "32", "--warmup", "1", "--batches", "2",
                              "--windows", "2", "--output", str(output)]) == 0
  if affinity is not None:
    assert os.sched_getaffinity(0) == affinity  # Unpinned again afterwards.
  result = json.loads(output.read_text())
  assert result["benchmark"] == "input_pipeline" and result["cores"] == 1
  for key in ("examples_per_s", "examples_per_s_per_core", "examples_per_cpu_s", "mean_jpeg_kb"):
    assert result[key] > 0, key
  assert len(result["examples_per_s_windows"]) == 2 and result["timed_batches"] == 4
  assert result["command"].startswith("python -m bench.input_pipeline --cores 1 ")
  assert "--num-images 3" in result["command"]


def test_generated_jpegs_have_imagenet_like_sizes():
  from resnet_ln.data.cpu_tensorflow import tf  # pylint: disable=import-outside-toplevel

  jpegs = input_pipeline.generate_jpegs(8, seed=1)
  shapes = [tuple(tf.image.extract_jpeg_shape(j).numpy()) for j in jpegs]
  assert all(333 <= min(s[:2]) <= 375 and 400 <= max(s[:2]) <= 500 and s[2] == 3
             for s in shapes)
  assert 60_000 < sum(map(len, jpegs)) / len(jpegs) < 160_000
