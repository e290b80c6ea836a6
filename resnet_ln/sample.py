"""Generates text from a character language model run, printing it as it is sampled.

  python -m resnet_ln.sample --workdir=DIR [--prompt=TEXT] [--length=500] [--temperature=0.8]
                             [--top_k=0] [--seed=0]

The prompt is read in one call, then each byte is sampled from the model's
softmax (divided by the temperature, restricted to the top k) inside one jitted
decode loop (`resnet_ln.models.generate`). The same seed gives the same text.
"""

import sys
from typing import BinaryIO

import jax
import numpy as np
from absl import flags

from resnet_ln import cli
from resnet_ln.models.generate import generate
from resnet_ln.run import Run, load_run

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined by `__main__` only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "The char_lm run's directory (as given to train.py).")
  flags.DEFINE_integer("step", None, "Checkpoint step; default: the newest.")
  flags.DEFINE_string("prompt", "\n", "Text to continue (UTF-8); default: a new line.")
  flags.DEFINE_integer("length", 500, "Bytes to generate.")
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature: lower is more conservative, "
                     "0 always takes the most likely byte.")
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely bytes only; 0: all.")
  flags.DEFINE_integer("seed", 0, "Random seed: the same seed gives the same text.")
  flags.mark_flag_as_required("workdir")


def sample_text(run: Run, prompt: str, length: int, temperature: float = 0.8, top_k: int = 0,
                seed: int = 0, stream: BinaryIO | None = None) -> bytes:
  """`length` bytes continuing `prompt`; the prompt, then each byte as it comes, are
  written to `stream` when given.

  Raises:
    cli.UsageError: not a language model run, an empty prompt, or a bad length,
      temperature or top_k.
  """
  if run.task != "language_modeling":
    raise cli.UsageError(f"{run.workdir} is a {run.task} run ({run.config.model} on "
                         f"{run.info.name}): sample needs a language model run "
                         "(e.g. configs/charlm.py); use resnet_ln.predict for images.")
  prompt_ids = np.frombuffer(prompt.encode("utf-8"), np.uint8).astype(np.int32)
  if prompt_ids.size == 0:
    raise cli.UsageError("--prompt is empty: give at least one character to continue.")
  for flag, value, ok, allowed in (
      ("length", length, length >= 0, ">= 0"),
      ("temperature", temperature, temperature >= 0, ">= 0 (0: the most likely byte)"),
      ("top_k", top_k, 0 <= top_k <= run.info.num_classes,
       f"in [0, {run.info.num_classes}] (0: all bytes; at most the vocabulary)")):
    if not ok:
      raise cli.UsageError(f"--{flag}={value} is invalid: must be {allowed}.")

  def write(tokens: np.ndarray) -> None:
    stream.write(bytes([int(tokens[0])]))
    stream.flush()

  if stream is not None:
    stream.write(prompt.encode("utf-8"))
  tokens = generate(run.model, run.variables, prompt_ids[None], length,
                    jax.random.PRNGKey(seed), temperature=temperature, top_k=top_k,
                    on_tokens=write if stream is not None else None)
  jax.effects_barrier()  # Every byte written before returning.
  return bytes(np.asarray(tokens[0], np.uint8))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}; see --help.")
  run = load_run(FLAGS.workdir, FLAGS.step)
  out = sys.stdout.buffer
  sample_text(run, FLAGS.prompt, FLAGS.length, FLAGS.temperature, FLAGS.top_k, FLAGS.seed,
              stream=out)
  out.write(b"\n")
  out.flush()


if __name__ == "__main__":
  define_flags()
  cli.run(main)
