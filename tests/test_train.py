"""The trainer end to end on the embedded digits dataset, on CPU devices."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default
from resnet_ln import train
from resnet_ln.train import steps
from resnet_ln.train import trainer


def tiny_config(**overrides):
  """A CIFAR-style ResNet-8 on digits: a few steps, logged at every step."""
  config = default.get_config()
  config.model = "cifar_resnet8"
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = 6
  config.warmup_epochs = 0.0
  config.schedule = "constant"
  config.learning_rate = 0.05
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.update(overrides)
  return config


def read_metrics(workdir, split="train"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def final_params(workdir):
  return train.load_variables(workdir)


@pytest.mark.parametrize("parallelism", ["pmap", "shard_map"])
def test_loss_curve_is_the_same_on_1_and_8_devices(tmp_path, parallelism):
  curves, variables = {}, {}
  for n in (1, 8):
    workdir = str(tmp_path / f"{parallelism}{n}")
    result = train.train_and_evaluate(tiny_config(parallelism=parallelism, num_devices=n),
                                      workdir)
    # Every test example once: 355 = 5 eval batches of 64 + 35, padded and masked.
    assert result["examples"] == 355
    curves[n] = [r["loss"] for r in read_metrics(workdir)]
    variables[n] = final_params(workdir)
  assert len(curves[1]) == 6
  np.testing.assert_allclose(curves[1], curves[8], rtol=1e-4)
  # Synchronised BatchNorm: the running statistics match too, not only the weights.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               variables[1], variables[8])


def test_pmap_and_shard_map_compute_the_same_step(tmp_path):
  losses = {}
  for parallelism in ("pmap", "shard_map"):
    workdir = str(tmp_path / parallelism)
    train.train_and_evaluate(tiny_config(parallelism=parallelism), workdir)
    losses[parallelism] = [r["loss"] for r in read_metrics(workdir)]
  np.testing.assert_allclose(losses["pmap"], losses["shard_map"], rtol=1e-4)


def test_resume_continues_to_the_same_parameters(tmp_path):
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(tiny_config(), straight)
  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(tiny_config(num_train_steps=3), resumed)
  result = train.train_and_evaluate(tiny_config(), resumed)
  assert result["step"] == 6
  # Steps 4-6 ran after the restart, on the same batches, from the same state.
  resumed_curve = [r["loss"] for r in read_metrics(resumed)]
  straight_curve = [r["loss"] for r in read_metrics(straight)]
  np.testing.assert_allclose(resumed_curve, straight_curve, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               final_params(straight), final_params(resumed))


def test_rerunning_a_finished_run_evaluates_its_final_state_again(tmp_path):
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(tiny_config(), workdir)
  again = train.train_and_evaluate(tiny_config(), workdir)
  assert again["step"] == 6 and again["examples"] == 355
  assert again == pytest.approx(first, rel=1e-6)
  assert [r["step"] for r in read_metrics(workdir, "eval")] == [6, 6]
  assert len(read_metrics(workdir)) == 6  # No step was trained again.


def test_a_run_stopped_at_its_last_step_evaluates_when_rerun(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  # As if SIGTERM came during the last step: the loop saves step 1 and stops
  # before its final eval.
  monkeypatch.setattr(trainer._Preemption, "agreed", lambda self: True)
  assert train.train_and_evaluate(tiny_config(num_train_steps=1), workdir) == {"step": 1}
  assert not read_metrics(workdir, "eval")
  monkeypatch.undo()
  result = train.train_and_evaluate(tiny_config(num_train_steps=1), workdir)
  assert result["step"] == 1 and result["examples"] == 355
  assert [r["step"] for r in read_metrics(workdir, "eval")] == [1]


def test_metrics_config_and_tensorboard_are_written(tmp_path):
  workdir = str(tmp_path)
  result = train.train_and_evaluate(tiny_config(num_train_steps=2), workdir)
  assert set(os.listdir(workdir)) >= {"config.json", "metrics.jsonl", "tensorboard", "checkpoints"}
  record = read_metrics(workdir)[-1]
  for key in ("loss", "accuracy", "learning_rate", "steps_per_sec", "examples_per_sec",
              "examples_per_sec_per_device", "eta_seconds"):
    assert key in record
  evals = read_metrics(workdir, "eval")
  assert len(evals) == 1 and evals[0]["step"] == 2
  # Eval visits every test example exactly once (digits: 355 test images).
  assert result["examples"] == evals[0]["examples"] == 355
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"] == "cifar_resnet8"
  [timing] = read_metrics(workdir, "time")
  assert timing["step"] == 2 and 0 < timing["goodput"] < 1
  assert timing["seconds_compiling"] > 0 and timing["seconds_total"] == pytest.approx(
      sum(v for k, v in timing.items() if k.startswith("seconds_") and k != "seconds_total"))
  with open(os.path.join(workdir, "dataset.json")) as f:
    record = json.load(f)
  assert (record["task"], record["num_classes"], record["example_shape"]) == (
      "classification", 10, [8, 8, 1])
  assert record["normalization"] == {"mean": [0.3060], "std": [0.3770]}


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(num_train_steps=3), workdir)
  with pytest.raises(train.NonFiniteError, match=r"step \d+.*step 3\) is kept"):
    train.train_and_evaluate(tiny_config(learning_rate=1e30, num_train_steps=9), workdir)
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()) == [3]


def test_skip_nonfinite_counts_skipped_updates(tmp_path):
  result = train.train_and_evaluate(
      tiny_config(learning_rate=1e30, skip_nonfinite=True, num_train_steps=4), str(tmp_path))
  assert result["step"] == 4
  assert sum(r.get("skipped_steps", 0) for r in read_metrics(str(tmp_path))) >= 1


def test_resuming_with_another_model_names_the_mismatch(tmp_path):
  train.train_and_evaluate(tiny_config(num_train_steps=3), str(tmp_path))
  with pytest.raises(train.CheckpointError, match="model: checkpoint 'cifar_resnet8', config 'cifar_resnet14'"):
    train.train_and_evaluate(tiny_config(model="cifar_resnet14"), str(tmp_path))


def test_bfloat16_and_float16_training_keep_float32_parameters(tmp_path):
  for dtype in ("bfloat16", "float16"):
    workdir = str(tmp_path / dtype)
    result = train.train_and_evaluate(tiny_config(dtype=dtype, num_train_steps=2), workdir)
    assert np.isfinite(result["loss"])
    params = final_params(workdir)["params"]
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))


def test_float16_overflow_skips_the_update_and_halves_the_loss_scale(tmp_path, monkeypatch):
  # A loss scale of 2^40 overflows float16 gradients at once: the first steps are
  # skipped, each halving the scale, instead of stopping the run.
  monkeypatch.setattr(steps, "INITIAL_LOSS_SCALE", 2.0**40)
  workdir = str(tmp_path)
  result = train.train_and_evaluate(tiny_config(dtype="float16", num_train_steps=3), workdir)
  assert result["step"] == 3
  records = read_metrics(workdir)
  assert sum(r.get("skipped_steps", 0) for r in records) == 3
  assert all(np.isfinite(r.get("loss", 0.0)) for r in records)
  params = final_params(workdir)["params"]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_char_lm_trains_and_reports_bits_per_char(tmp_path):
  config = tiny_config(
      model="char_lm", dataset="pydoc_topics", seq_len=32, batch_size=16, eval_batch_size=256,
      optimizer="adamw", learning_rate=3e-3, weight_decay=0.0, grad_clip_norm=1.0,
      num_train_steps=4, log_every_steps=2)
  config.model_kwargs = {"embed_dim": 16, "features": 32, "num_layers": 1}
  result = train.train_and_evaluate(config, str(tmp_path))
  assert 0 < result["bits_per_char"] < 8.5
  assert result["tokens"] > 0


def test_profile_steps_write_a_trace_and_nothing_without_them(tmp_path):
  traced, plain = str(tmp_path / "traced"), str(tmp_path / "plain")
  train.train_and_evaluate(tiny_config(num_train_steps=3, profile_steps="1:2"), traced)
  train.train_and_evaluate(tiny_config(num_train_steps=3), plain)
  traces = [name for _, _, names in os.walk(os.path.join(traced, "profile")) for name in names]
  assert any(name.endswith(".xplane.pb") for name in traces), traces
  assert not os.path.exists(os.path.join(plain, "profile"))


def test_the_compilation_cache_is_written_where_the_config_says(tmp_path):
  cache = tmp_path / "cache"
  script = ("import sys; from configs import default; from resnet_ln import train; "
            "config = default.get_config(); "
            "config.update(model='cifar_resnet8', batch_size=32, num_train_steps=2, "
            f"compilation_cache_dir={str(cache)!r}); "
            "train.train_and_evaluate(config, sys.argv[1])")
  subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], check=True,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=300)
  assert len(os.listdir(cache)) > 0
