"""Smoke tests of the benchmark: it runs the trainer's steps and writes complete JSON.

Timings never decide pass or fail: only that the figures exist and are positive.
"""

import json
import subprocess
import sys
import textwrap

import pytest
from jax.experimental import rnn

from bench import cudnn
from bench import report
from bench import tables
from bench import throughput

TINY = ["--batch-size", "16", "--steps", "2", "--windows", "2", "--warmup", "1",
        "--num-devices", "2", "--peak-size", "64"]
TINY_CHAR_LM = ["--model", "char_lm", "--seq-len", "8", "--features", "16", "--embed-dim", "8",
                *TINY, "--no-eval"]


def _positive(section, *keys):
  for key in keys:
    value = section[key]
    if isinstance(value, dict):
      assert all(v > 0 for k, v in value.items() if k != "spread"), (key, value)
      assert value.get("spread", 0) >= 0, (key, value)
    else:
      assert value > 0, (key, value)


@pytest.fixture(scope="module")
def resnet_results(tmp_path_factory):
  """cifar_resnet8 at 8x8 under both parallelisms, one JSON file each."""
  results_dir = tmp_path_factory.mktemp("results")
  for parallelism in ("pmap", "shard_map"):
    assert throughput.main(["--model", "cifar_resnet8", "--image-size", "8", *TINY,
                            "--parallelism", parallelism, "--output", str(results_dir)]) == 0
  return results_dir


@pytest.mark.parametrize("parallelism", ["pmap", "shard_map"])
def test_throughput_writes_positive_train_and_eval_figures(resnet_results, parallelism):
  (path,) = resnet_results.glob(f"*_{parallelism}x2_*.json")
  result = json.loads(path.read_text())
  assert result["benchmark"] == "throughput"
  for key in ("device_kind", "jax_version", "package_version", "date", "command"):
    assert result[key], key
  assert result["num_devices"] == 2 and result["per_device_batch"] == 8
  assert f"--parallelism {parallelism}" in result["command"]
  for section in (result["train"], result["eval"]):
    _positive(section, "examples_per_s", "step_time_ms", "compile_s", "flops_per_step",
              "tflops_per_s", "mfu")
    assert len(section["window_s"]) == 2
    assert section["tokens_per_s"] is None
  # The train step costs about three forward passes.
  assert 2 < result["train"]["flops_per_step"] / result["eval"]["flops_per_step"] < 4
  _positive(result["peak_matmul"], "tflops_per_s")
  assert result["peak_bytes_in_use"] is None  # The CPU backend reports no memory statistics.


def test_char_lm_reports_tokens_and_skips_cudnn_on_cpu(tmp_path):
  output = tmp_path / "char_lm.json"
  assert throughput.main([*TINY_CHAR_LM, "--layer-norm", "true", "--output", str(output)]) == 0
  result = json.loads(output.read_text())
  assert result["model_kwargs"]["layer_norm"] is True
  assert "--layer-norm true" in result["command"]
  assert result["eval"] is None
  _positive(result["train"], "tokens_per_s", "flops_per_step", "mfu")
  ratio = result["train"]["tokens_per_s"]["median"] / result["train"]["examples_per_s"]["median"]
  assert ratio == pytest.approx(8)
  assert "cpu" in result["cudnn_lstm"]["skipped"]


def _lstm_without_cudnn(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers,
                        dropout, bidirectional, precision=None):
  """`rnn.lstm` computed by its pure-JAX reference, so the GPU-only path runs on CPU."""
  del precision
  unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
  return rnn.lstm_ref(x, h_0, c_0, *unpacked, seq_lengths, input_size, hidden_size, num_layers,
                      dropout, bidirectional)


def test_cudnn_reference_is_timed_beside_char_lm_where_available(tmp_path, monkeypatch):
  monkeypatch.setattr(cudnn, "cudnn_skip_reason", lambda: None)
  monkeypatch.setattr(rnn, "lstm", _lstm_without_cudnn)
  output = tmp_path / "char_lm.json"
  assert throughput.main([*TINY_CHAR_LM, "--layer-norm", "false", "--dtype", "bfloat16",
                          "--output", str(output)]) == 0
  result = json.loads(output.read_text())
  assert result["model_kwargs"]["layer_norm"] is False
  _positive(result["train"], "tokens_per_s", "mfu")
  reference = result["cudnn_lstm"]
  assert reference["dtype"] == "float32" and reference["peak_matmul"]["dtype"] == "float32"
  _positive(reference["train"], "tokens_per_s", "flops_per_step", "mfu")
  # Same sizes, hence the same analytic FLOPs as our LSTM.
  assert reference["train"]["flops_per_step"] == result["train"]["flops_per_step"]
  assert "our time/token" in report.row(result)[len(tables.HEADER)]


def test_layer_norm_both_expands_to_one_run_per_setting():
  runs = throughput.expand(throughput.parse_args(
      ["--model", "char_lm,cifar_resnet20", "--layer-norm", "both"]))
  assert [(r.model, r.layer_norm) for r in runs] == [
      ("char_lm", "true"), ("char_lm", "false"), ("cifar_resnet20", "both")]


def test_one_json_file_for_several_workloads_is_refused():
  with pytest.raises(SystemExit, match="names one file"):
    throughput.main(["--model", "char_lm", "--layer-norm", "both", "--output", "out.json"])


def test_bench_imports_without_tensorflow_tfds_or_orbax():
  blocked = ("tensorflow", "tensorflow_datasets", "orbax")
  script = textwrap.dedent(f"""
      import importlib.abc, sys
      class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
          if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(name)
      sys.meta_path.insert(0, Block())
      import bench.report
      assert "jax" not in sys.modules, "bench.report imported JAX"
      import bench.throughput
      print(sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r}))
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_report_renders_one_table_and_keeps_the_intro(resnet_results, tmp_path):
  output = tmp_path / "RESULTS.md"
  output.write_text(f"{report.INTRO_START}\nOur notes.\n{report.INTRO_END}\nold tables\n")
  assert report.main(["--results-dir", str(resnet_results), "--output", str(output)]) == 0
  text = output.read_text()
  assert "Our notes." in text and "old tables" not in text
  assert text.count("## CPU") == 1
  rows = [line for line in text.splitlines() if line.startswith("| cifar_resnet8 ")]
  assert len(rows) == 2
  assert all("python -m bench.throughput" in line and "| 2026-" in line for line in rows)


def test_report_tables_other_benchmarks_and_skips_foreign_json(resnet_results, tmp_path):
  results_dir = tmp_path / "results"
  results_dir.mkdir()
  for path in resnet_results.glob("*.json"):
    (results_dir / path.name).write_text(path.read_text())
  (results_dir / "pipeline.json").write_text(json.dumps(
      {"benchmark": "input_pipeline", "dataset": "digits", "examples_per_s": 1234.5,
       "per_stage": {"decode": 1.0}}))
  (results_dir / "notes.json").write_text(json.dumps(["not", "a", "result"]))
  (results_dir / "broken.json").write_text("{")
  output = tmp_path / "RESULTS.md"
  assert report.main(["--results-dir", str(results_dir), "--output", str(output)]) == 0
  text = output.read_text()
  assert text.count("| cifar_resnet8 ") == 2
  assert "## Benchmark: input_pipeline" in text
  assert "| dataset | examples_per_s |" in text and "| digits | 1,234 |" in text
