"""What a preempted, misconfigured or damaged job meets, run through `train.py` itself."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from resnet_ln import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model=cifar_resnet8", "--config.batch_size=32", "--config.schedule=constant",
        "--config.warmup_epochs=0", "--config.learning_rate=0.05", "--config.num_devices=2"]


def train_command(workdir, *overrides):
  return [sys.executable, os.path.join(REPO, "train.py"), "--config=" + os.path.join(REPO, "configs/default.py"),
          f"--workdir={workdir}", *TINY, *overrides]


def run(workdir, *overrides):
  return subprocess.run(train_command(workdir, *overrides), capture_output=True, text=True,
                        cwd=REPO, timeout=300)


def checkpoint_steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(directory) if s.isdigit())


def assert_same_variables(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)


def test_sigterm_saves_the_current_step_and_the_rerun_finishes_identically(tmp_path):
  straight, preempted = str(tmp_path / "straight"), str(tmp_path / "preempted")
  steps = ["--config.num_train_steps=150", "--config.log_every_steps=5",
           "--config.checkpoint_every_steps=100"]
  assert run(straight, *steps).returncode == 0

  process = subprocess.Popen(train_command(preempted, *steps), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(preempted, "metrics.jsonl")
  deadline = time.time() + 240
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    assert time.time() < deadline and process.poll() is None, process.stderr.read()
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr
  assert "SIGTERM" in stderr
  saved = checkpoint_steps(preempted)
  assert saved and 5 <= saved[-1] < 150, saved

  rerun = run(preempted, *steps)
  assert rerun.returncode == 0, rerun.stderr
  assert f"Resumed from" in rerun.stderr
  assert checkpoint_steps(preempted)[-1] == 150
  assert_same_variables(train.load_variables(straight), train.load_variables(preempted))


def test_a_corrupted_latest_checkpoint_is_named_and_the_previous_one_used(tmp_path):
  workdir = str(tmp_path / "run")
  steps = ["--config.checkpoint_every_steps=3", "--config.log_every_steps=3"]
  assert run(workdir, "--config.num_train_steps=6", *steps).returncode == 0
  assert checkpoint_steps(workdir) == [3, 6]
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "6", "state")):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(os.path.getsize(f.name) // 2 - 1, 0))

  resumed = run(workdir, "--config.num_train_steps=9", *steps)
  assert resumed.returncode == 0, resumed.stderr
  assert "checkpoints/6 is unreadable" in resumed.stderr
  assert os.path.isdir(os.path.join(workdir, "unreadable_checkpoints", "6"))
  assert "Resumed from" in resumed.stderr and "at step 3" in resumed.stderr
  straight = str(tmp_path / "straight")
  assert run(straight, "--config.num_train_steps=9", *steps).returncode == 0
  assert_same_variables(train.load_variables(straight), train.load_variables(workdir, step=9))


def test_no_readable_checkpoint_stops_with_a_message_and_touches_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  assert run(workdir, "--config.num_train_steps=3", "--config.checkpoint_every_steps=3").returncode == 0
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "3", "state")):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  result = run(workdir, "--config.num_train_steps=6")
  assert result.returncode != 0
  assert "None of the checkpoints" in result.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


@pytest.mark.parametrize("overrides, message", [
    (["--config.batch_sise=32"], "batch_sise"),
    (["--config.batch_size=many"], "batch_size"),
    (["--config.model=resnet9000"], "Unknown model 'resnet9000'"),
    (["--config.dataset=no_such_dataset"], "no_such_dataset"),
    (["--config.learning_rate=-1.0"], "config.learning_rate=-1.0"),
    (["--config.num_devices=64"], "config.num_devices=64"),
    (["--config.dataset=imagenet2012", "--config.data_dir=/nonexistent/tfds"], "manual"),
])
def test_bad_command_lines_fail_with_one_clear_message(tmp_path, overrides, message):
  workdir = tmp_path / "run"
  result = run(str(workdir), *overrides)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def test_an_unwritable_workdir_is_a_clear_error(tmp_path):
  # A path below a regular file cannot be created, whoever runs the test (root too).
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  result = run(str(blocker / "run"), "--config.num_train_steps=2")
  assert result.returncode != 0
  assert "Cannot write to --workdir" in result.stderr
  assert "Traceback" not in result.stderr
