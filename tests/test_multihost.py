"""Multi-host training, simulated by two local processes of 4 CPU devices each.

The processes find each other through `jax.distributed` (a coordinator on a
loopback port) and run their collectives over Gloo, JAX's CPU implementation,
exactly as hosts of a pod do over the network. The reference is this pytest
process, a 1-process run on 8 CPU devices (see conftest.py). The job runs
under pmap until one host is preempted, and both resume it under shard_map.

Process p of P reads its own part of the train split, so the global batches
of a 2-process run are not those of a 1-process run; `two_process_batches`
feeds the 1-process reference the same global batches (both processes' streams
side by side), which makes any difference the fault of the collectives, the
state handling or the checkpoints.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import jax
import numpy as np

from configs import default
from resnet_ln import data, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROCESSES = 2
STEPS = 12
TINY = dict(model="cifar_resnet8", batch_size=32, num_train_steps=STEPS, log_every_steps=3,
            checkpoint_every_steps=6, schedule="constant", warmup_epochs=0.0,
            learning_rate=0.05)
FINGERPRINT = re.compile(r"Saving checkpoint \S+/(\d+) \(state fingerprint (\w+)\)")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two_processes(workdirs, parallelism="pmap", preempt_process_1=False):
  """Runs train.py as processes 0 and 1 of one job, in workdirs[0] and [1].

  Process 1 runs with umask 077, so every file it creates is private to its
  owner: that is how the test tells which process wrote what.

  Args:
    preempt_process_1: send SIGTERM to process 1 alone once step 3 is logged,
      as when one host of a pod is preempted.

  Returns:
    Each process's exit code and log (all its runs so far).
  """
  port = free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  logs = [open(os.path.join(os.path.dirname(workdirs[p]), f"process{p}.log"), "a+")
          for p in range(NUM_PROCESSES)]
  processes = [subprocess.Popen(
      [sys.executable, os.path.join(REPO, "train.py"),
       "--config=" + os.path.join(REPO, "configs/default.py"), f"--workdir={workdirs[p]}",
       *(f"--config.{k}={v}" for k, v in TINY.items()), f"--config.parallelism={parallelism}",
       "--verbosity=0", f"--coordinator_address=127.0.0.1:{port}",
       f"--num_processes={NUM_PROCESSES}", f"--process_id={p}"],
      env=env, cwd=REPO, stdout=logs[p], stderr=subprocess.STDOUT,
      umask=0o022 if p == 0 else 0o077) for p in range(NUM_PROCESSES)]
  try:
    metrics = os.path.join(workdirs[0], "metrics.jsonl")
    while preempt_process_1 and not (os.path.exists(metrics) and os.path.getsize(metrics)):
      assert all(process.poll() is None for process in processes)
      time.sleep(0.02)
    if preempt_process_1:
      processes[1].send_signal(signal.SIGTERM)
    codes = [process.wait(timeout=420) for process in processes]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  texts = []
  for log in logs:
    log.seek(0)
    texts.append(log.read())
    log.close()
  return codes, texts


def train_on_two_processes(workdir, parallelism, preempt_process_1=False):
  """Both processes in `workdir`; returns their logs after checking that both succeeded."""
  codes, logs = run_two_processes([workdir] * NUM_PROCESSES, parallelism, preempt_process_1)
  for p, (code, log) in enumerate(zip(codes, logs)):
    assert code == 0, f"process {p} exited with {code}:\n{log[-5000:]}"
  return logs


def two_process_batches(create_train_iterator):
  """A `create_train_iterator` whose global batches are those of 2 processes.

  Each process's stream is a function of (config, process index, process
  count); both are made here, with jax told it is that process, and joined
  along the leading axis: devices 0-3 get process 0's examples, devices 4-7
  process 1's, as in the 2-process run.
  """
  def create(config, *, start_step=0):
    streams = []
    for index in range(NUM_PROCESSES):
      with mock.patch.object(jax, "process_index", return_value=index), \
          mock.patch.object(jax, "process_count", return_value=NUM_PROCESSES):
        streams.append(create_train_iterator(config, start_step=start_step))
    return ({key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
            for parts in zip(*streams))

  return create


def tiny_config(**overrides):
  config = default.get_config()
  config.update(TINY)
  config.update(overrides)
  return config


def assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)


def files_under(directory):
  return {os.path.relpath(os.path.join(root, name), directory): os.stat(os.path.join(root, name))
          for root, dirs, files in os.walk(directory) for name in dirs + files}


def test_two_processes_train_as_one_share_one_checkpoint_and_resume_under_shard_map(
    tmp_path, monkeypatch):
  # A pmap job, one of whose hosts is preempted, rerun under shard_map: each
  # parallelism runs on two processes, and the checkpoint passes from one to the other.
  workdir = str(tmp_path / "two_processes")
  logs = train_on_two_processes(workdir, "pmap", preempt_process_1=True)
  # Both processes agreed to stop at the same step, with a checkpoint there...
  stops = {re.search(r"Stopping at step (\d+) after SIGTERM", log).group(1) for log in logs}
  assert len(stops) == 1 and int(min(stops)) < STEPS, stops
  stop = int(stops.pop())
  # ...and the rerun of both resumes from it, under the other parallelism.
  logs = train_on_two_processes(workdir, "shard_map")
  assert f"at step {stop}." in logs[0]
  assert "parallelism: 'pmap' -> 'shard_map'" in logs[0]

  # Both processes saved each checkpoint from bitwise identical states.
  saved = [dict(FINGERPRINT.findall(log)) for log in logs]
  assert {str(stop), "12"} <= set(saved[0]), logs[0][-3000:]
  assert saved[0] == saved[1]

  # Only process 0 wrote logs, metrics and the config's history; process 1's
  # files are checkpoint files.
  files = files_under(workdir)
  private = {name for name, stat in files.items() if not stat.st_mode & 0o077}
  assert all(name.startswith("checkpoints") for name in private), private
  assert {"config.json", "config_history", "metrics.jsonl", "tensorboard"} <= set(files)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records if r["split"] == "train"] == [3, 6, 9, 12]
  # Eval counted each of the 355 digits test images once, across both processes.
  [final_eval] = [r for r in records if r["split"] == "eval"]
  assert final_eval["examples"] == 355

  # One process on 8 devices, fed the same global batches, computes the same
  # steps up to the stop from the same seed...
  monkeypatch.setattr(data, "create_train_iterator",
                      two_process_batches(data.create_train_iterator))
  reference = str(tmp_path / "one_process")
  train.train_and_evaluate(tiny_config(parallelism="pmap", num_train_steps=stop), reference)
  assert_close(train.load_variables(reference), train.load_variables(workdir, step=stop))

  # ...and resumes under shard_map from the checkpoint the two processes wrote
  # together, to the same parameters as they reached at step 12.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  for step in saved[0]:
    if int(step) > stop:
      shutil.rmtree(os.path.join(resumed, "checkpoints", step))
  result = train.train_and_evaluate(tiny_config(parallelism="shard_map"), resumed)
  assert result["step"] == STEPS and result["examples"] == 355
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    steps_logged = [(r["step"], r["split"]) for r in map(json.loads, f)][len(records):]
  assert steps_logged == [(s, "train") for s in (3, 6, 9, 12) if s > stop] + [
      (12, "eval"), (12, "time")]
  assert_close(train.load_variables(resumed), train.load_variables(workdir))


def test_a_workdir_that_the_processes_do_not_share_is_a_clear_error(tmp_path):
  # As when each host of a pod is given a directory on its own local disk.
  workdirs = [str(tmp_path / f"host{p}" / "run") for p in range(NUM_PROCESSES)]
  for workdir in workdirs:
    os.makedirs(os.path.dirname(workdir))
  codes, logs = run_two_processes(workdirs)
  assert codes == [1, 1]
  for log in logs:
    assert "is not one directory shared by all processes" in log.strip().splitlines()[-1]
    assert "Traceback" not in log
