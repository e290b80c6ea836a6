"""What a preempted, misconfigured or damaged job meets, run through `train.py` itself.

Most tests copy `finished`, the workdir of one uninterrupted run (checkpoints at
steps 8, 16 and 24), and damage the copy or interrupt a run like it; its final
parameters are what every resumed run must reach.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import default
from resnet_ln import train
from resnet_ln.train import workdir as workdir_lib
from resnet_ln.train.validation import naming_memory_limits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(model="cifar_resnet8", batch_size=32, schedule="constant", warmup_epochs=0.0,
            learning_rate=0.05, num_devices=2, num_train_steps=24, checkpoint_every_steps=8,
            log_every_steps=2)
PARTIAL = ".orbax-checkpoint-tmp"  # How Orbax names a checkpoint that is being written.


def train_command(workdir, *overrides):
  return [sys.executable, os.path.join(REPO, "train.py"),
          "--config=" + os.path.join(REPO, "configs/default.py"), f"--workdir={workdir}",
          *(f"--config.{key}={value}" for key, value in TINY.items()), *overrides]


def run(workdir, *overrides):
  return subprocess.run(train_command(workdir, *overrides), capture_output=True, text=True,
                        cwd=REPO, timeout=300)


def start(workdir, log, *overrides):
  """train.py in the background, logging to the file `log` (a pipe could fill and block it)."""
  with open(log, "w") as f:
    return subprocess.Popen(train_command(workdir, *overrides), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=f)


def tiny_config(**overrides):
  config = default.get_config()
  config.update(TINY)
  config.update(overrides)
  return config


def checkpoint_steps(workdir):
  """The steps of the complete checkpoints."""
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def partial_checkpoints(workdir):
  return [s for s in os.listdir(os.path.join(workdir, "checkpoints")) if PARTIAL in s]


def snapshot(directory):
  """Every path under `directory`, with each file's size and modification time."""
  entries = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs:
      entries[os.path.relpath(os.path.join(root, name), directory)] = None
    for name in files:
      stat = os.stat(os.path.join(root, name))
      entries[os.path.relpath(os.path.join(root, name), directory)] = (stat.st_size,
                                                                      stat.st_mtime_ns)
  return entries


def wait_for(condition, process, log, timeout=240):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline and process.poll() is None, open(log).read()
    time.sleep(0.005)


def lock_file(workdir):
  return os.path.join(workdir, workdir_lib.LOCK_NAME)


def assert_same_variables(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  result = run(workdir)
  assert result.returncode == 0, result.stderr
  assert checkpoint_steps(workdir) == [8, 16, 24]
  return workdir


@pytest.fixture
def copy_of_finished(finished, tmp_path):
  return shutil.copytree(finished, tmp_path / "run")


# ----------------------------------------------------------------------------
# Interruptions.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl_c"])
def test_a_stop_signal_saves_the_current_step_and_the_rerun_finishes_identically(
    tmp_path, finished, signum):
  workdir, log = str(tmp_path / "run"), str(tmp_path / "stderr.txt")
  process = start(workdir, log)
  metrics = os.path.join(workdir, "metrics.jsonl")
  wait_for(lambda: os.path.exists(metrics) and os.path.getsize(metrics) > 0,  # Step 2 is logged.
           process, log)
  process.send_signal(signum)
  assert process.wait(timeout=240) == 0, open(log).read()
  assert "Traceback" not in open(log).read()
  stopped = re.search(rf"Stopping at step (\d+) after {signum.name}", open(log).read())
  assert stopped, open(log).read()
  assert checkpoint_steps(workdir)[-1] == int(stopped.group(1)) < 24

  rerun = run(workdir)
  assert rerun.returncode == 0, rerun.stderr
  assert f"at step {stopped.group(1)}." in rerun.stderr
  assert_same_variables(train.load_variables(finished), train.load_variables(workdir))


def test_a_second_ctrl_c_stops_at_once_and_the_newest_complete_checkpoint_resumes(
    tmp_path, finished):
  workdir, log = str(tmp_path / "run"), str(tmp_path / "stderr.txt")
  process = start(workdir, log)
  wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints")) and
           checkpoint_steps(workdir), process, log)
  process.send_signal(signal.SIGINT)
  wait_for(lambda: "SIGINT received" in open(log).read(), process, log)
  process.send_signal(signal.SIGINT)
  assert process.wait(timeout=240) == 1, open(log).read()
  assert "stopped at once by a second Ctrl-C" in open(log).read()
  assert "Traceback" not in open(log).read()
  assert not os.path.exists(lock_file(workdir))

  rerun = run(workdir)
  assert rerun.returncode == 0, rerun.stderr
  assert_same_variables(train.load_variables(finished), train.load_variables(workdir))


def test_sigterm_during_start_up_exits_cleanly_and_leaves_the_workdir_as_it_was(
    copy_of_finished, tmp_path):
  workdir, log = str(copy_of_finished), str(tmp_path / "stderr.txt")
  before = snapshot(workdir)
  process = start(workdir, log, "--config.num_train_steps=32")
  # The lock is taken before the state is built, restored and compiled.
  wait_for(lambda: os.path.exists(lock_file(workdir)), process, log)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=240) == 0, open(log).read()
  assert "SIGTERM received during start-up" in open(log).read()
  assert "Traceback" not in open(log).read()
  assert snapshot(workdir) == before


def test_sigkill_during_an_async_save_leaves_the_previous_checkpoint_to_resume_from(
    tmp_path, finished):
  workdir, log = str(tmp_path / "run"), str(tmp_path / "stderr.txt")
  overrides = ["--config.checkpoint_every_steps=2"]  # Many saves: many chances to catch one.
  process = start(workdir, log, *overrides)
  # Freeze the process while a save is in flight, after an earlier one completed;
  # kill it if the save is still unfinished, else let it go on to the next save.
  deadline = time.time() + 240
  while True:
    assert time.time() < deadline and process.poll() is None, (
        "no save was caught in flight:\n" + open(log).read())
    if os.path.isdir(os.path.join(workdir, "checkpoints")) and partial_checkpoints(workdir) \
        and checkpoint_steps(workdir):
      process.send_signal(signal.SIGSTOP)
      time.sleep(0.1)  # Until it has stopped.
      if partial_checkpoints(workdir):
        process.kill()
        break
      process.send_signal(signal.SIGCONT)
    time.sleep(0.005)
  process.wait(timeout=60)
  [partial] = partial_checkpoints(workdir)
  previous = checkpoint_steps(workdir)[-1]
  assert previous < int(partial.split(".")[0])
  assert train.load_variables(workdir)["params"]  # The newest complete one reads.

  rerun = run(workdir, *overrides)
  assert rerun.returncode == 0, rerun.stderr
  assert f"at step {previous}." in rerun.stderr
  assert not partial_checkpoints(workdir)  # Saving that step again replaced it.
  assert_same_variables(train.load_variables(finished), train.load_variables(workdir))


# ----------------------------------------------------------------------------
# One run per workdir.
# ----------------------------------------------------------------------------
def lock_written(workdir):
  return lambda: os.path.exists(lock_file(workdir)) and os.path.getsize(lock_file(workdir)) > 0


def test_a_second_run_on_a_live_workdir_is_refused_and_the_first_finishes(tmp_path, finished):
  workdir, log = str(tmp_path / "run"), str(tmp_path / "stderr.txt")
  first = start(workdir, log)
  wait_for(lock_written(workdir), first, log)
  first.send_signal(signal.SIGSTOP)  # Still holding the lock, and changing nothing meanwhile.
  try:
    time.sleep(0.1)
    before = snapshot(workdir)
    second = run(workdir)
    after = snapshot(workdir)
  finally:
    first.send_signal(signal.SIGCONT)
  assert second.returncode == 1
  assert f"is in use by PID {first.pid} on host {socket.gethostname()}, running since" in \
      second.stderr
  assert "Traceback" not in second.stderr
  assert after == before
  assert first.wait(timeout=240) == 0, open(log).read()
  assert not os.path.exists(lock_file(workdir))
  assert_same_variables(train.load_variables(finished), train.load_variables(workdir))


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, finished):
  workdir, log = str(tmp_path / "run"), str(tmp_path / "stderr.txt")
  killed = start(workdir, log)
  wait_for(lock_written(workdir), killed, log)
  killed.kill()
  killed.wait(timeout=60)
  assert os.path.exists(lock_file(workdir))

  rerun = run(workdir)
  assert rerun.returncode == 0, rerun.stderr
  assert f"Took over the lock {lock_file(workdir)} of PID {killed.pid} on host" in rerun.stderr
  assert f"process {killed.pid} is no longer running" in rerun.stderr
  assert not os.path.exists(lock_file(workdir))
  assert_same_variables(train.load_variables(finished), train.load_variables(workdir))


HERE = socket.gethostname()


@pytest.mark.parametrize("holder, heartbeat_age_s, taken_over", [
    (dict(host="elsewhere"), 60, False),
    (dict(host="elsewhere"), workdir_lib.STALE_AFTER_S + 60, True),
    (dict(host=HERE, pid=os.getpid(), pid_start=workdir_lib._process_start(os.getpid())), 0,
     False),
    (dict(host=HERE, pid=os.getpid(), pid_start="1"), 0, True),  # The PID was reused.
], ids=["other_host_alive", "other_host_stale", "this_host_alive", "this_host_pid_reused"])
def test_a_lock_is_taken_over_only_when_its_holder_is_gone(tmp_path, holder, heartbeat_age_s,
                                                           taken_over):
  path = lock_file(str(tmp_path))
  record = {"pid": 4321, "since": "2026-01-01T00:00:00+00:00", "command": "train.py", **holder}
  with open(path, "w") as f:
    json.dump(record, f)
  os.utime(path, (time.time() - heartbeat_age_s,) * 2)
  lock = workdir_lib.WorkdirLock(str(tmp_path))
  if taken_over:
    with lock:
      with open(path) as f:
        assert json.load(f)["pid"] == os.getpid()
    assert os.listdir(tmp_path) == []
  else:
    with pytest.raises(train.WorkdirLockedError, match="is in use by PID .* delete"):
      lock.__enter__()
    with open(path) as f:
      assert json.load(f) == record


# ----------------------------------------------------------------------------
# Damaged checkpoints and disks.
# ----------------------------------------------------------------------------
def test_a_corrupted_latest_checkpoint_is_named_and_the_previous_one_used(copy_of_finished,
                                                                          finished):
  workdir = str(copy_of_finished)
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "24", "state")):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(os.path.getsize(f.name) // 2 - 1, 0))

  assert_resumes_past_checkpoint_24(workdir, finished, "checkpoints/24 is unreadable")


def assert_resumes_past_checkpoint_24(workdir, finished, reported):
  """A rerun reports checkpoint 24 (`reported`), sets it aside, resumes from step 16 and
  retrains step 24 to the uninterrupted run's weights."""
  resumed = run(workdir)
  assert resumed.returncode == 0, resumed.stderr
  assert reported in resumed.stderr
  assert os.path.isdir(os.path.join(workdir, "unreadable_checkpoints", "24"))
  assert "Resumed from" in resumed.stderr and "at step 16." in resumed.stderr
  assert_same_variables(train.load_variables(finished), train.load_variables(workdir, step=24))


def flip_bytes_in_largest_array_file(checkpoint):
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(checkpoint, "state"))
           for name in names]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.seek(os.path.getsize(largest) // 2)
    data = f.read(8)
    f.seek(-len(data), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in data))


def test_a_checkpoint_whose_bytes_changed_is_refused_and_the_previous_one_used(
    copy_of_finished, finished):
  workdir = str(copy_of_finished)
  flip_bytes_in_largest_array_file(os.path.join(workdir, "checkpoints", "24"))
  with pytest.raises(train.CheckpointError, match=r"checkpoints/24 is damaged: 1 of its arrays"):
    train.load_variables(workdir)

  assert_resumes_past_checkpoint_24(workdir, finished,
                                    "checkpoints/24 is unreadable (CheckpointError: ")


def test_a_checkpoint_without_digests_still_restores_with_a_warning(copy_of_finished, finished,
                                                                    caplog):
  workdir = str(copy_of_finished)
  # As written before checkpoints recorded digests.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "24", "digest"))
  assert_same_variables(train.load_variables(finished), train.load_variables(workdir))
  assert "records no digests" in caplog.text


def test_no_readable_checkpoint_stops_with_a_message_and_touches_nothing(copy_of_finished):
  workdir = str(copy_of_finished)
  for step in (8, 16, 24):
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(step), "state")):
      for name in files:
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  before = snapshot(workdir)
  result = run(workdir, "--config.num_train_steps=32")
  assert result.returncode == 1
  assert "None of the checkpoints" in result.stderr
  assert "Traceback" not in result.stderr
  assert snapshot(workdir) == before


def test_a_full_disk_is_a_clear_error_and_the_last_complete_checkpoint_stays_latest(
    copy_of_finished):
  workdir = str(copy_of_finished)
  # A 64 KiB file-size limit: logs and metrics fit, but the 3x3x64x64 float32
  # kernel (144 KiB) cannot, whichever Orbax data file it is written into, so the
  # save at step 28 fails as on a full disk.
  command = shlex.join(train_command(workdir, "--config.num_train_steps=32",
                                     "--config.checkpoint_every_steps=4"))
  result = subprocess.run(["bash", "-c", f"ulimit -f 64 && exec {command}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 1
  # Orbax logs the failed write, and its background writers may log more of it
  # at exit, after train.py's message: find that one message among the lines.
  messages = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(messages) == 1, result.stderr[-3000:]
  message, = messages
  assert message.startswith(f"error: No space left to write checkpoint {workdir}/checkpoints/"
                            "28: the disk is full"), result.stderr[-3000:]
  assert f"{workdir}/checkpoints/24, is intact" in message
  assert checkpoint_steps(workdir) == [8, 16, 24] and not partial_checkpoints(workdir)


# ----------------------------------------------------------------------------
# Bad input: one clear message, a non-zero exit code, the workdir as it was.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("existing_workdir", [False, True], ids=["new", "existing"])
@pytest.mark.parametrize("arguments, message", [
    (["--config.batch_sise=32"], "unknown config field in --config.batch_sise=32: "
                                 "'batch_sise'. Did you mean \"batch_size\""),
    (["--config.model_kwargs.nosuch=3"], "unknown config field in "
                                         "--config.model_kwargs.nosuch=3: 'nosuch'"),
    (["--config.batch_size=many"], "--config.batch_size=many"),
    (["--config.learning_rate=fast"], "--config.learning_rate=fast"),
    (["--config.augment=sometimes"], "--config.augment=sometimes"),
    (["--num_processes=2", "--process_id=0"], "need --coordinator_address"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
     "--process_id=2 must be in [0, --num_processes=2)"),
])
def test_bad_command_lines_fail_with_one_clear_message(tmp_path, finished, existing_workdir,
                                                       arguments, message):
  workdir = tmp_path / "run"
  if existing_workdir:
    shutil.copytree(finished, workdir)
  before = snapshot(workdir)
  result = run(str(workdir), *arguments)
  assert result.returncode == 1
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert snapshot(workdir) == before and workdir.exists() == existing_workdir


# Config errors in-process: train.py prints the message of each of these
# ValueErrors and OSErrors as one line and exits with status 1.
@pytest.mark.parametrize("existing_workdir", [False, True], ids=["new", "existing"])
@pytest.mark.parametrize("overrides, message", [
    # Unknown names.
    (dict(model="resnet9000"), "Unknown model 'resnet9000'"),
    (dict(dataset="no_such_dataset"), "Unknown dataset 'no_such_dataset'"),
    (dict(optimizer="adagrad"), "config.optimizer='adagrad' is invalid"),
    (dict(schedule="linear"), "config.schedule='linear' is invalid"),
    (dict(parallelism="tpu_magic"), "config.parallelism='tpu_magic' is invalid"),
    (dict(dtype="float64"), "config.dtype='float64' is invalid"),
    # Values out of range.
    (dict(batch_size=-8), "config.batch_size=-8 is invalid"),
    (dict(batch_size=33), "must both divide by the number of devices"),
    (dict(batch_size=30, num_devices=8), "must both divide by the number of devices"),
    (dict(eval_batch_size=0), "config.eval_batch_size=0 is invalid"),
    (dict(seed=-1), "config.seed=-1 is invalid"),
    (dict(learning_rate=-1.0), "config.learning_rate=-1.0 is invalid"),
    (dict(learning_rate=float("inf")), "config.learning_rate=inf is invalid: must be a finite"),
    (dict(weight_decay=float("nan")), "config.weight_decay=nan is invalid: must be a finite"),
    (dict(schedule="piecewise", lr_boundaries=(10, 20), lr_factors=(0.1, float("inf"))),
     "config.lr_factors=(0.1, inf) is invalid: must be a finite number"),
    (dict(momentum=1.5), "config.momentum=1.5 is invalid"),
    (dict(label_smoothing=1.0), "config.label_smoothing=1.0 is invalid"),
    (dict(num_devices=64), "config.num_devices=64 but only"),
    (dict(num_train_steps=0, num_epochs=0.0), "config.num_train_steps=0 is invalid"),
    (dict(max_to_keep=0), "config.max_to_keep=0 is invalid"),
    (dict(log_every_steps=0), "config.log_every_steps=0 is invalid"),
    (dict(image_size=-3), "config.image_size=-3 is invalid"),
    (dict(dataset="pydoc_topics", model="char_lm", seq_len=0), "config.seq_len=0 is invalid"),
    (dict(batch_size=2**40), "config.batch_size=1099511627776 is invalid: one batch of 8x8x1"),
    (dict(eval_batch_size=2**40), "config.eval_batch_size=1099511627776 is invalid: one batch"),
    (dict(schedule="piecewise", lr_boundaries=(10,), lr_factors=()), "config.lr_factors=()"),
    # Data that is not there.
    (dict(data_dir="{tmp}/no_such_dir"), "no_such_dir' is invalid: no such directory"),
    (dict(dataset="imagenet2012", data_dir="{tmp}"), "needs a manual download"),
    (dict(eval_split="nosuch"), "config.eval_split='nosuch': Unknown split 'nosuch'"),
    (dict(train_split="train[:nosuch]"), "config.train_split='train[:nosuch]': "),
])
def test_bad_configs_fail_with_one_clear_message(tmp_path, finished, existing_workdir,
                                                 overrides, message):
  workdir = tmp_path / "run"
  if existing_workdir:
    shutil.copytree(finished, workdir)
  before = snapshot(workdir)
  overrides = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v
               for k, v in overrides.items()}
  with pytest.raises((ValueError, OSError), match=re.escape(message)):
    train.train_and_evaluate(tiny_config(**overrides), str(workdir))
  assert snapshot(workdir) == before and workdir.exists() == existing_workdir


def test_a_run_too_big_for_memory_names_the_fields_to_lower(tmp_path):
  workdir = str(tmp_path / "run")
  # 400 TB for one image: the batch's inputs alone are more than the host holds.
  result = run(workdir, "--config.image_size=10000000")
  assert result.returncode == 1
  assert ("error: config.batch_size=32 is invalid: one batch of 10000000x10000000x1 inputs "
          "takes") in result.stderr
  assert "Lower config.batch_size, or config.image_size (now 10000000)." in result.stderr
  assert result.stderr.count("error:") == 1
  assert "Traceback" not in result.stderr
  assert not os.path.exists(lock_file(workdir))
  assert not os.path.exists(os.path.join(workdir, "checkpoints")) or not checkpoint_steps(workdir)


def test_an_out_of_memory_error_from_xla_names_the_fields_to_lower():
  # What fits on the devices cannot be checked beforehand: XLA's error is translated.
  config = tiny_config(image_size=64)
  error = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 99 bytes.")
  with pytest.raises(ValueError, match=re.escape(
      "The run does not fit in the devices' memory (RESOURCE_EXHAUSTED: Out of memory "
      "allocating 99 bytes.). Lower config.batch_size (now 32), config.image_size (now 64)")):
    with naming_memory_limits(config):
      raise error
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    with naming_memory_limits(config):
      raise jax.errors.JaxRuntimeError("INTERNAL: something else")


def test_a_rerun_with_a_changed_learning_rate_keeps_the_first_config_and_records_the_change(
    copy_of_finished):
  workdir = str(copy_of_finished)
  with open(os.path.join(workdir, "config.json")) as f:
    first = f.read()
  rerun = run(workdir, "--config.num_train_steps=28", "--config.learning_rate=0.01")
  assert rerun.returncode == 0, rerun.stderr
  with open(os.path.join(workdir, "config.json")) as f:
    assert f.read() == first
  assert os.listdir(os.path.join(workdir, "config_history")) == ["config_step24.json"]
  with open(os.path.join(workdir, "config_history", "config_step24.json")) as f:
    changed = json.load(f)
  assert (changed["learning_rate"], changed["num_train_steps"]) == (0.01, 28)
  assert "The config changed from step 24 on (learning_rate: 0.05 -> 0.01; num_train_steps: " \
         "24 -> 28)" in rerun.stderr


def test_an_unwritable_workdir_is_a_clear_error(tmp_path):
  # A path below a regular file cannot be created, whoever runs the test (root too).
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(OSError, match="Cannot write to --workdir"):
    train.train_and_evaluate(tiny_config(), str(blocker / "run"))


def test_a_bucket_url_as_workdir_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Where os.makedirs would put a directory named "gs:".
  with pytest.raises(OSError, match="URLs are not supported.*mount the bucket"):
    train.train_and_evaluate(tiny_config(), "gs://bucket/run")
  assert not os.listdir(tmp_path)
