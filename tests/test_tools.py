"""Using a trained run: load_run, evaluate, predict, sample and export, after tiny trainings."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import charlm
from configs import default
from resnet_ln import load_run
from resnet_ln import models
from resnet_ln import train
from resnet_ln.data import sources
from resnet_ln.data.cpu_tensorflow import tf
from resnet_ln.evaluate import evaluate_run
from resnet_ln import export
from resnet_ln.predict import normalize, predict_files
from resnet_ln.models.sequence import LEGACY_NAMES
from resnet_ln.run import RunError
from resnet_ln.train import checkpoint
from resnet_ln.sample import sample_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _last_eval(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "eval"][-1]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """cifar_resnet8 on digits, 3 steps."""
  config = default.get_config()
  config.update(model="cifar_resnet8", batch_size=32, eval_batch_size=64, num_train_steps=3,
                warmup_epochs=0.0, schedule="constant", learning_rate=0.05,
                checkpoint_every_steps=3)
  workdir = str(tmp_path_factory.mktemp("digits"))
  train.train_and_evaluate(config, workdir)
  return workdir


def _char_lm_config(num_train_steps=3):
  config = charlm.get_config("lnlstm")
  config.model_kwargs.update(features=32, embed_dim=16)
  config.update(seq_len=32, batch_size=16, eval_batch_size=16, num_train_steps=num_train_steps,
                eval_every_steps=0, checkpoint_every_steps=3, eval_split="validation[:5%]")
  return config


@pytest.fixture(scope="module")
def char_lm_run(tmp_path_factory):
  """A 32-unit LayerNorm LSTM char_lm on pydoc_topics, 3 steps."""
  workdir = str(tmp_path_factory.mktemp("char_lm"))
  train.train_and_evaluate(_char_lm_config(), workdir)
  return workdir


# --- load_run ---------------------------------------------------------------

def test_load_run_needs_no_tensorflow_tfds_or_ml_collections(digits_run):
  blocked = ("tensorflow", "tensorflow_datasets", "ml_collections")
  script = textwrap.dedent(f"""
      import importlib.abc, importlib.util, sys
      # Importing a blocked module fails; probing for it (as etils does) still works.
      class Refuse(importlib.abc.Loader):
        def create_module(self, spec):
          raise ModuleNotFoundError(spec.name)
        def exec_module(self, module):
          pass
      class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
          if name.split(".")[0] in {blocked!r}:
            return importlib.util.spec_from_loader(name, Refuse())
      sys.meta_path.insert(0, Block())
      import numpy as np
      import resnet_ln
      run = resnet_ln.load_run({digits_run!r})
      logits = run.apply(np.zeros((2, *run.input_shape), np.float32))
      print(run.step, run.config.model, run.info.num_classes, logits.shape)
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["3", "cifar_resnet8", "10", "(2,", "10)"]


def test_load_run_names_the_missing_file(digits_run, tmp_path):
  with pytest.raises(RunError, match="config.json"):
    load_run(str(tmp_path))
  shutil.copy(os.path.join(digits_run, "config.json"), tmp_path)
  with pytest.raises(RunError, match="dataset.json.*rerun the same train.py command"):
    load_run(str(tmp_path))
  shutil.copy(os.path.join(digits_run, "dataset.json"), tmp_path)
  with pytest.raises(RunError, match="No checkpoint"):
    load_run(str(tmp_path))
  with pytest.raises(RunError, match="saved steps: \\[3\\]"):
    load_run(digits_run, step=2)


def test_load_run_refuses_a_config_that_does_not_build(digits_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(digits_run, workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["model"] = "cifar_resnet9"
  (workdir / "config.json").write_text(json.dumps(config))
  with pytest.raises(RunError, match="config.json does not build a model"):
    load_run(str(workdir))


def _with_old_names(tree):
  """`tree` with the sequence models' submodules under their former names."""
  old_names = {new: old for old, new in LEGACY_NAMES.items()}
  if isinstance(tree, dict):
    rename = "lstm" in tree
    return {(old_names.get(k, k) if rename else k): _with_old_names(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_with_old_names(v) for v in tree]
  return tree


def test_load_run_maps_the_sequence_models_old_parameter_names(char_lm_run, tmp_path):
  run = load_run(char_lm_run)
  for name in ("config.json", "dataset.json"):
    shutil.copy(os.path.join(char_lm_run, name), tmp_path)
  saver = checkpoint.Checkpointer(str(tmp_path), max_to_keep=1, asynchronous=False)
  saver.save(3, {"params": _with_old_names(run.variables["params"])},
             ml_collections.ConfigDict(run.config.to_dict()))
  saver.close()
  renamed = load_run(str(tmp_path))
  assert set(renamed.variables["params"]) == {"embed", "lstm", "head"}
  tokens = np.arange(12, dtype=np.int32).reshape(2, 6)
  np.testing.assert_array_equal(renamed.apply(tokens), run.apply(tokens))


def test_a_run_saved_under_the_old_names_resumes_as_if_renamed(char_lm_run, tmp_path):
  renamed, old = str(tmp_path / "renamed"), str(tmp_path / "old")
  shutil.copytree(char_lm_run, renamed)
  shutil.copytree(char_lm_run, old)
  manager = checkpoint.ocp.CheckpointManager(os.path.join(old, "checkpoints"))
  state = manager.restore(3, args=checkpoint.ocp.args.Composite(
      state=checkpoint.ocp.args.StandardRestore())).state
  manager.close()
  state = _with_old_names(state)
  # The parameters and AdamW's two momenta.
  assert str(jax.tree_util.tree_structure(state)).count("'LSTM_0'") == 3
  shutil.rmtree(os.path.join(old, "checkpoints"))
  saver = checkpoint.Checkpointer(old, max_to_keep=1, asynchronous=False)
  saver.save(3, state, _char_lm_config())
  saver.close()
  for workdir in (renamed, old):
    train.train_and_evaluate(_char_lm_config(num_train_steps=5), workdir)
  resumed = [load_run(w).variables for w in (renamed, old)]
  assert load_run(old).step == 5
  jax.tree.map(np.testing.assert_array_equal, resumed[0], resumed[1])


def test_a_run_under_the_old_names_initialises_another(char_lm_run, tmp_path):
  old = str(tmp_path / "old")
  run = load_run(char_lm_run)
  saver = checkpoint.Checkpointer(old, max_to_keep=1, asynchronous=False)
  saver.save(3, {"params": _with_old_names(run.variables["params"])}, _char_lm_config())
  saver.close()
  config = _char_lm_config()
  # A zero learning rate leaves the parameters where the source left them.
  config.update(init_from=old, num_train_steps=1, learning_rate=0.0)
  workdir = str(tmp_path / "new")
  train.train_and_evaluate(config, workdir)
  first = load_run(workdir).variables["params"]
  jax.tree.map(np.testing.assert_array_equal, first, run.variables["params"])


# --- evaluate ---------------------------------------------------------------

def test_evaluate_on_the_eval_split_gives_the_trainers_final_eval(digits_run):
  metrics, path = evaluate_run(digits_run)
  expected = _last_eval(digits_run)
  assert metrics == pytest.approx({k: v for k, v in expected.items()
                                   if k not in ("step", "split")}, rel=1e-9)
  assert path == os.path.join(digits_run, "eval", "test_3.json")
  with open(path) as f:
    assert json.load(f)["accuracy"] == metrics["accuracy"]


def test_evaluate_on_the_train_split_counts_every_training_example(digits_run):
  metrics, path = evaluate_run(digits_run, split="train",
                               overrides=["eval_batch_size=128"])
  assert metrics["examples"] == 1442
  assert path.endswith("train_3.json")


def test_evaluate_refuses_an_unknown_override_field(digits_run):
  with pytest.raises(ValueError, match="no such field"):
    evaluate_run(digits_run, overrides=["eval_batch_sise=64"])


def test_evaluate_of_a_char_lm_gives_the_trainers_bits_per_char(char_lm_run):
  metrics, _ = evaluate_run(char_lm_run)
  assert metrics["bits_per_char"] == pytest.approx(_last_eval(char_lm_run)["bits_per_char"],
                                                   rel=1e-9)


# --- predict ----------------------------------------------------------------

def test_predict_on_png_files_agrees_with_the_model_on_those_images(digits_run, tmp_path):
  builder = sources.load_builder("digits", None)
  images = np.stack([example["image"] for example in
                     tfds.as_numpy(builder.as_dataset(split="test[:12]"))])
  paths = []
  for i, image in enumerate(images):
    paths.append(str(tmp_path / f"{i:02d}.png"))
    tf.io.write_file(paths[-1], tf.io.encode_png(image))
  (tmp_path / "broken.png").write_bytes(b"not a png")
  run = load_run(digits_run)
  results = predict_files(run, [str(tmp_path)], top_k=3)
  assert [r["file"] for r in results] == [*paths, str(tmp_path / "broken.png")]
  assert "error" in results[-1]
  expected = np.asarray(jax.nn.softmax(run.apply(normalize(images, run))))
  assert [r["top_k"][0]["index"] for r in results[:-1]] == list(expected.argmax(-1))
  np.testing.assert_allclose([r["top_k"][0]["probability"] for r in results[:-1]],
                             expected.max(-1), rtol=1e-5)
  assert all(len(r["top_k"]) == 3 for r in results[:-1])


def test_predict_names_the_classes_with_the_runs_label_names(digits_run, tmp_path):
  workdir = tmp_path / "named"
  shutil.copytree(digits_run, workdir)
  record = json.loads((workdir / "dataset.json").read_text())
  record["label_names"] = [f"digit_{i}" for i in range(10)]
  (workdir / "dataset.json").write_text(json.dumps(record))
  image = tmp_path / "zeros.png"
  tf.io.write_file(str(image), tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)))  # RGB -> gray
  (result,) = predict_files(load_run(str(workdir)), [str(image)], top_k=10)
  assert sorted(c["label"] for c in result["top_k"]) == record["label_names"]


# --- sample -----------------------------------------------------------------

def test_sample_is_deterministic_for_a_seed_and_changes_with_it(char_lm_run):
  run = load_run(char_lm_run)
  texts = [sample_text(run, "def ", 30, seed=seed) for seed in (0, 0, 1)]
  assert len(texts[0]) == 30
  assert texts[0] == texts[1] and texts[0] != texts[2]


def test_sample_starts_from_the_models_distribution_at_the_prompt(char_lm_run):
  run = load_run(char_lm_run)
  prompt = np.frombuffer(b"import os", np.uint8).astype(np.int32)[None]
  _, logits = models.generate(run.model, run.variables, prompt, 4, jax.random.PRNGKey(0),
                              temperature=0.8, return_logits=True)
  np.testing.assert_allclose(jax.nn.softmax(logits[:, 0] / 0.8),
                             jax.nn.softmax(run.apply(prompt)[:, -1] / 0.8), atol=1e-6)


def test_sample_command_prints_the_prompt_and_the_text_as_sampled(char_lm_run):
  out = subprocess.run([sys.executable, "-m", "resnet_ln.sample", f"--workdir={char_lm_run}",
                        "--prompt=def ", "--length=20", "--seed=3"], capture_output=True, cwd=REPO)
  assert out.returncode == 0, out.stderr
  assert out.stdout == b"def " + sample_text(load_run(char_lm_run), "def ", 20, seed=3) + b"\n"


# --- export -----------------------------------------------------------------

@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_reloads_and_matches_apply_for_any_batch_size(digits_run, tmp_path, fmt):
  run = load_run(digits_run)
  path = str(tmp_path / "model")
  if fmt == "stablehlo":
    export.export_stablehlo(run, path)
  else:
    export.export_savedmodel(run, path)
  served = export.load_exported(path, fmt)
  for batch in (1, 7):
    x = np.random.default_rng(batch).standard_normal((batch, *run.input_shape), np.float32)
    np.testing.assert_allclose(np.asarray(served(x)), run.apply(x), atol=1e-5, rtol=1e-5)


# --- the commands' errors ---------------------------------------------------

def _command(*args):
  out = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO)
  return out.returncode, out.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def no_checkpoint_run(digits_run, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("no_checkpoint")
  for name in ("config.json", "dataset.json"):
    shutil.copy(os.path.join(digits_run, name), workdir)
  return str(workdir)


@pytest.mark.parametrize("command, args", [
    ("evaluate", []), ("predict", ["image.png"]), ("sample", []), ("export", ["--output=out"])])
def test_commands_without_a_checkpoint_say_so_in_one_line(no_checkpoint_run, command, args):
  rc, stderr = _command(f"resnet_ln.{command}", f"--workdir={no_checkpoint_run}", *args)
  assert rc == 1
  assert stderr[-1].startswith("error: No checkpoint in "), stderr
  assert not any("Traceback" in line for line in stderr)


@pytest.mark.parametrize("args, message", [
    (("resnet_ln.sample", "--length=3"), "is a classification run"),
    (("resnet_ln.evaluate", "--split=nope"), "--split=nope: Unknown split"),
])
def test_commands_refuse_a_wrong_task_or_split_in_one_line(digits_run, args, message):
  rc, stderr = _command(*args, f"--workdir={digits_run}")
  assert rc == 1 and stderr[-1].startswith("error: ") and message in stderr[-1], stderr


def test_predict_refuses_a_language_model_run_in_one_line(char_lm_run, tmp_path):
  rc, stderr = _command("resnet_ln.predict", f"--workdir={char_lm_run}", str(tmp_path))
  assert rc == 1 and "is a language_modeling run" in stderr[-1], stderr


@pytest.mark.parametrize("command", ["evaluate", "predict", "sample", "export"])
def test_commands_document_themselves(command):
  out = subprocess.run([sys.executable, "-m", f"resnet_ln.{command}", "--help"],
                       capture_output=True, text=True, cwd=REPO)
  # absl's --help exits with status 1 (as train.py's does).
  assert f"python -m resnet_ln.{command} --workdir=DIR" in out.stdout
  assert "--workdir: The" in out.stdout


def test_load_run_takes_the_config_in_effect_at_its_step(digits_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(digits_run, workdir)
  history = os.path.join(workdir, "config_history")
  os.makedirs(history, exist_ok=True)
  with open(os.path.join(workdir, "config.json")) as f:
    changed = json.load(f)
  changed["learning_rate"] = 0.123
  with open(os.path.join(history, "config_step3.json"), "w") as f:
    json.dump(changed, f)
  changed["learning_rate"] = 0.456
  with open(os.path.join(history, "config_step9.json"), "w") as f:
    json.dump(changed, f)
  assert load_run(workdir).config.learning_rate == 0.123  # The newest checkpoint is step 3.
