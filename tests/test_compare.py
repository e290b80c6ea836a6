"""bench.compare: resnet_ln and PyTorch timed in the same rounds, ratios recorded, failures kept apart.

Timings never decide pass or fail: only that the figures exist, are positive and are
recorded. The PyTorch tests skip where torch is not installed (it is an optional
benchmark dependency); the no-torch path is tested everywhere.
"""

import glob
import importlib.util
import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bench import compare
from bench import report
from resnet_ln.models import get_model

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="PyTorch (an optional benchmark dependency) is not installed")
TINY = ["--batch-size", "2", "--image-size", "8", "--model", "cifar_resnet8", "--seq-len", "4",
        "--embed-dim", "4", "--features", "8", "--rounds", "2", "--steps", "1", "--warmup", "1"]


def _results(directory):
  results = {}
  for path in glob.glob(str(directory / "*.json")):
    with open(path) as f:
      result = json.load(f)
    results[result["workload"]] = result
  return results


def test_without_torch_it_says_so_and_exits_nonzero(monkeypatch, capsys, tmp_path):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError.
  assert compare.main(["--workloads", "char_lm_lstm", *TINY, "--output", str(tmp_path)]) == 2
  assert "needs PyTorch" in capsys.readouterr().err
  assert not list(tmp_path.iterdir())


@needs_torch
@pytest.mark.parametrize("model, classes, expected", [
    ("resnet18", 1000, 11_689_512), ("resnet50", 1000, 25_557_032),
    ("cifar_resnet20", 10, 269_722)])
def test_torch_resnets_have_the_reference_parameter_counts(model, classes, expected):
  from bench import torch_reference
  network = torch_reference.resnet(model, classes)
  assert sum(p.numel() for p in network.parameters()) == expected


@needs_torch
def test_torch_ln_lstm_char_lm_computes_resnet_ln_char_lm():
  """The TorchScript LN-LSTM, given resnet_ln's weights, returns resnet_ln's logits."""
  import torch
  from bench import torch_reference

  kwargs = dict(vocab_size=11, embed_dim=3, features=4, num_layers=1, layer_norm=True)
  model = get_model("char_lm", **kwargs)
  tokens = np.random.default_rng(0).integers(0, 11, (2, 6)).astype(np.int32)
  params = model.init(jax.random.key(0), jnp.asarray(tokens))["params"]
  # LayerNorm gains and biases away from their 1 and 0 so that each one is checked.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.3 * jax.random.normal(jax.random.key(len(str(path))), x.shape),
      params)
  expected = model.apply({"params": params}, jnp.asarray(tokens))

  t = lambda x: torch.tensor(np.asarray(x))
  cell = params["lstm"]["layer_0"]
  network = torch_reference.char_lm(kwargs)
  layer = network.lstm[0]
  with torch.no_grad():
    network.embed.weight.copy_(t(params["embed"]["embedding"]))
    layer.weight_ih.copy_(t(cell["input_proj"]["kernel"]).T)
    layer.weight_hh.copy_(t(cell["recurrent_proj"]["kernel"]).T)
    layer.bias.copy_(t(cell["gate_bias"]))
    for norm, source in ((layer.ln_ih, cell["input_proj"]), (layer.ln_hh, cell["recurrent_proj"])):
      norm.weight.copy_(t(source["scale"]))
      norm.bias.copy_(t(source["bias"]))
    layer.ln_c.weight.copy_(t(cell["cell_scale"]))
    layer.ln_c.bias.copy_(t(cell["cell_bias"]))
    network.proj.weight.copy_(t(params["head"]["kernel"]).T)
    network.proj.bias.copy_(t(params["head"]["bias"]))
    got = network(torch.tensor(tokens, dtype=torch.long)).numpy()
  np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-4, atol=1e-4)


@needs_torch
def test_compare_times_both_frameworks_in_every_round_and_records_ratios(tmp_path):
  code = compare.main(["--workloads", "cifar_resnet20,char_lm_lnlstm", *TINY,
                       "--output", str(tmp_path)])
  assert code == 0
  results = _results(tmp_path)
  assert set(results) == {"cifar_resnet20", "char_lm_lnlstm"}
  for name, other in (("cifar_resnet20", "torch"), ("char_lm_lnlstm", "torch_script")):
    result = results[name]
    assert result["benchmark"] == "compare" and result["rounds_done"] == 2
    assert result["host_load_avg_1m"] is not None and len(result["host_load_avg_1m_rounds"]) == 2
    for contender in (compare.OURS, other):
      entry = result["contenders"][contender]
      assert entry["status"] == "ok", entry
      assert len(entry["train_s"]) == len(entry["eval_s"]) == 2
      assert entry["train_ms"] > 0 and entry["eval_ms"] > 0
    assert result["ratios"][other]["train"] > 0 and result["ratios"][other]["eval"] > 0
    assert result["ours_over_theirs_train"].startswith(other)
    assert result["failed"] is None
    assert "--model cifar_resnet8" in result["command"] or name != "cifar_resnet20"
  assert results["cifar_resnet20"]["details"]["model"] == "cifar_resnet8"
  # Not available on a CPU: recorded as skipped, with the reason.
  assert results["char_lm_lnlstm"]["contenders"]["jax_cudnn"]["status"] == "skipped"
  assert results["cifar_resnet20"]["contenders"]["torch_compile"]["status"] == "skipped"
  assert results["cifar_resnet20"]["contenders"]["xla_conv"]["status"] == "ok"  # CPU only.
  text = report.render(report.load_results(str(tmp_path)), "intro\n")
  assert "## Benchmark: compare" in text and "ours_over_theirs_train" in text


@needs_torch
def test_a_failing_framework_is_recorded_and_the_other_keeps_its_figures(tmp_path, monkeypatch):
  calls = {"n": 0}

  def failing_torch_steps(*args, **kwargs):
    def train(n):
      calls["n"] += 1
      if calls["n"] > 1:  # Warm-up passes; the first timed round fails.
        raise RuntimeError("out of memory (simulated)")
    return train, lambda n: None

  monkeypatch.setattr(compare, "torch_steps", failing_torch_steps)
  code = compare.main(["--workloads", "char_lm_lstm", "--only", "torch", *TINY,
                       "--output", str(tmp_path)])
  assert code == 1
  (result,) = _results(tmp_path).values()
  torch_entry = result["contenders"]["torch"]
  assert torch_entry["status"] == "failed" and torch_entry["failed_in"] == "round 0 train"
  assert "out of memory (simulated)" in torch_entry["error"] and "torch" in result["failed"]
  ours = result["contenders"][compare.OURS]
  assert ours["status"] == "ok" and len(ours["train_s"]) == 2 and ours["train_ms"] > 0
  assert set(result["contenders"]) == {compare.OURS, "torch"}  # --only


@needs_torch
def test_a_framework_that_cannot_build_is_recorded_and_skipped(tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise ValueError("no such kernel (simulated)")

  monkeypatch.setattr(compare, "torch_steps", broken)
  assert compare.main(["--workloads", "cifar_resnet20", *TINY, "--output", str(tmp_path)]) == 1
  (result,) = _results(tmp_path).values()
  assert result["contenders"]["torch"]["failed_in"] == "build and warm-up"
  assert result["contenders"][compare.OURS]["train_ms"] > 0
  assert result["ratios"]["torch"]["train"] is None


def test_unknown_workload_is_refused_with_the_choices():
  with pytest.raises(SystemExit):
    compare.parse_args(["--workloads", "resnet51"])


def _convolutions(model, images):
  """How many convolutions the lowered train-mode gradient of `model` has."""
  variables = model.init(jax.random.PRNGKey(0), images, train=False)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, images, train=True,
                            mutable=["batch_stats"])
    return logits.sum()

  return jax.jit(jax.grad(loss)).lower(variables["params"]).as_text().count("stablehlo.convolution")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="1x1 convolutions are matmuls on CPU only")
def test_xla_conv_contender_runs_every_convolution_as_xla_convolution():
  config = ml_collections.ConfigDict({"num_classes": 3})
  ours = lambda config: get_model("resnet18", num_classes=config.num_classes)  # Three 1x1 convs.
  images = jnp.ones((2, 32, 32, 3))
  ours_count = _convolutions(ours(config), images)
  assert _convolutions(compare.xla_convolution_model(ours)(config), images) > ours_count
