"""Trains a resnet_ln model: `python train.py --config=configs/default.py --workdir=DIR`.

Any config field can be overridden: `--config.batch_size=512`. Rerunning the
same command on the same workdir resumes from its latest checkpoint; Ctrl-C or
SIGTERM saves the current step and exits, and one run at a time holds a
workdir. With
--distributed (Cloud TPU pods, SLURM, Open MPI: detected by JAX), under SLURM or
Open MPI with several tasks, or with --coordinator_address, `jax.distributed`
is initialised first.
"""

import errno
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_ln import cli
from resnet_ln.train import signals

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
config_flags.DEFINE_config_file("config", None,
                                "Config file (configs/NAME.py or configs/NAME.py:ARG).",
                                lock_config=True)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_bool("distributed", None,
                  "Initialise jax.distributed with the cluster settings JAX detects (Cloud TPU "
                  "pods, SLURM, Open MPI, Kubernetes). Default: when the environment shows a "
                  "multi-process launch (srun, mpirun, GKE TPU); --nodistributed: never.")
flags.mark_flags_as_required(["config", "workdir"])


def _in_cluster() -> bool:
  """Whether a launcher that jax.distributed can read started several processes."""
  return (int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
          or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
          or "JAX_COORDINATOR_ADDRESS" in os.environ)


def _quiet_libraries() -> None:
  """Keeps the INFO lines of JAX, Orbax and TFDS (a dozen per checkpoint) out of the log.

  Their warnings and errors still show, and --verbosity=0 brings everything back.
  """
  noisy = tuple(os.sep + name + os.sep for name in ("jax", "orbax", "tensorflow_datasets"))
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= std_logging.WARNING
      or not any(name in record.pathname for name in noisy))


def main(argv):
  del argv
  try:
    # Until the trainer installs its own handlers, a SIGTERM or Ctrl-C stops start-up.
    with signals.StopSignals():
      _train()
  except signals.Interrupted as e:
    logging.warning("%s Nothing was saved; rerun the command to start or resume the run.", e)
  except KeyboardInterrupt:
    print("error: stopped at once by a second Ctrl-C, without saving; rerun the command to "
          "resume from the newest complete checkpoint.", file=sys.stderr, flush=True)
    # Not sys.exit: Orbax's writer threads, stopped mid-save, would print tracebacks while
    # Python shuts down. What they leave is what a SIGKILL leaves, which resuming handles.
    os._exit(1)


def _train() -> None:
  count, index = FLAGS.num_processes, FLAGS.process_id
  if FLAGS.coordinator_address is None and (count, index) != (None, None):
    sys.exit("error: --num_processes and --process_id need --coordinator_address=HOST:PORT "
             "(where process 0 listens).")
  if None not in (count, index) and not 0 <= index < count:
    sys.exit(f"error: --process_id={index} must be in [0, --num_processes={count}).")
  import jax

  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.distributed or (FLAGS.distributed is None and _in_cluster()):
    jax.distributed.initialize()
  if jax.process_count() > 1 and not jax.distributed.is_initialized():
    # E.g. a Cloud TPU pod, whose runtime joins the hosts by itself: Orbax's
    # checkpoints would then wait forever for the other hosts.
    sys.exit(f"error: this is one of {jax.process_count()} processes, but jax.distributed is "
             "not initialised: add --distributed.")
  if jax.process_index() != 0 and not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # One process's log is enough, unless asked.
  if not FLAGS["verbosity"].present:
    _quiet_libraries()

  from resnet_ln import train

  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, OSError, train.CheckpointError, train.NonFiniteError,
          train.WorkdirLockedError) as e:
    message = str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      message += (f" ({e.filename or FLAGS.workdir}): the disk is full. Free some space, then "
                  "rerun the same command to resume from the newest checkpoint.")
    sys.exit(f"error: {message}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
