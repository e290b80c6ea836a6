"""Exports a run's model for serving: inference only, the weights folded in as constants.

  python -m resnet_ln.export --workdir=DIR --output=PATH [--format=stablehlo|savedmodel]
                             [--batch_size=N|dynamic] [--platforms=cpu,cuda,tpu]

The exported function maps a batch of model inputs (normalised float32 images
[batch, height, width, channels], or int32 tokens [batch, seq_len]) to float32
logits, in inference mode (BatchNorm uses its running statistics, no dropout).

- stablehlo: a `jax.export` artifact (serialised StableHLO) in the file PATH;
  `jax.export.deserialize(open(PATH, 'rb').read()).call(x)` runs it, from any
  JAX program, without resnet_ln.
- savedmodel: a TensorFlow SavedModel in the directory PATH, through
  `jax2tf` (signature `serving_default`, input `inputs`), for TF Serving or
  `tf.saved_model.load`.

`--batch_size=dynamic` (the default) gives a symbolic batch dimension: one
artifact for every batch size. `PATH.json` (stablehlo) or `PATH/resnet_ln.json`
(savedmodel) records what a server needs: the input shape and dtype, the
normalisation and the label names.
"""

import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from absl import flags

from resnet_ln import cli
from resnet_ln.run import Run, load_run
from resnet_ln.train.tasks import get_task

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined by `__main__` only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "The run's directory (as given to train.py).")
  flags.DEFINE_integer("step", None, "Checkpoint step; default: the newest.")
  flags.DEFINE_string("output", None, "Where to write: a file (stablehlo) or a directory "
                      "(savedmodel).")
  flags.DEFINE_enum("format", "stablehlo", ["stablehlo", "savedmodel"], "What to write.")
  flags.DEFINE_string("batch_size", "dynamic", "The batch size the export takes: N, or 'dynamic' "
                      "for any.")
  flags.DEFINE_list("platforms", None, "stablehlo: the platforms to lower for (cpu, cuda, rocm, "
                    "tpu); default: this machine's.")
  flags.mark_flags_as_required(["workdir", "output"])

FORMATS = ("stablehlo", "savedmodel")
METADATA_FILE = "resnet_ln.json"  # In a SavedModel directory.


def inference_fn(run: Run) -> Callable[[jax.Array], jax.Array]:
  """inputs -> float32 logits, with the run's variables closed over (constants when traced)."""
  return lambda inputs: run.apply(inputs).astype(jnp.float32)


def _input_spec(run: Run, batch_size: int | None) -> tuple[str, tuple[int, ...], str]:
  """(polymorphic shape, concrete shape with None for the batch, dtype) of the inputs."""
  dims = ", ".join(str(d) for d in run.input_shape)
  batch = "b" if batch_size is None else str(batch_size)
  return f"({batch}, {dims})", (batch_size, *run.input_shape), get_task(run.task).input_dtype


def export_stablehlo(run: Run, path: str, batch_size: int | None = None,
                     platforms: list[str] | None = None) -> jax.export.Exported:
  """Writes the serialised `jax.export.Exported` of `inference_fn(run)` to `path`."""
  poly, _, dtype = _input_spec(run, batch_size)
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(poly), jnp.dtype(dtype))
  exported = jax.export.export(jax.jit(inference_fn(run)),
                               platforms=tuple(platforms) if platforms else None)(spec)
  with open(path, "wb") as f:
    f.write(exported.serialize())
  _write_metadata(run, f"{path}.json", batch_size, "stablehlo")
  return exported


def export_savedmodel(run: Run, path: str, batch_size: int | None = None) -> None:
  """Writes `inference_fn(run)` as a TensorFlow SavedModel (through jax2tf) to directory `path`."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel

  poly, shape, dtype = _input_spec(run, batch_size)
  converted = jax2tf.convert(inference_fn(run), polymorphic_shapes=[poly], with_gradient=False)
  module = tf.Module()
  module.serve = tf.function(
      lambda inputs: {"logits": converted(inputs)}, autograph=False,
      input_signature=[tf.TensorSpec(shape, tf.as_dtype(dtype), name="inputs")])
  tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
  _write_metadata(run, os.path.join(path, METADATA_FILE), batch_size, "savedmodel")


def load_exported(path: str, format: str = "stablehlo") -> Callable[[Any], Any]:  # pylint: disable=redefined-builtin
  """The exported function at `path` (inputs -> logits), as `export` wrote it."""
  if format == "stablehlo":
    with open(path, "rb") as f:
      return jax.export.deserialize(bytearray(f.read())).call
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  serve = tf.saved_model.load(path).signatures["serving_default"]
  return lambda inputs: serve(inputs=tf.constant(inputs))["logits"].numpy()


def _write_metadata(run: Run, path: str, batch_size: int | None, format: str) -> None:  # pylint: disable=redefined-builtin
  _, shape, dtype = _input_spec(run, batch_size)
  mean, std = run.normalization
  record = {"format": format, "workdir": run.workdir, "step": run.step, "model": run.config.model,
            "task": run.task, "input_shape": list(shape), "input_dtype": dtype,
            "normalization": {"mean": list(mean), "std": list(std)},
            "label_names": list(run.label_names), "num_classes": run.info.num_classes}
  with open(path, "w") as f:
    json.dump(record, f, indent=2)


def parse_batch_size(text: str) -> int | None:
  """'dynamic' -> None, 'N' -> N >= 1.

  Raises:
    cli.UsageError: anything else.
  """
  if text == "dynamic":
    return None
  if not text.isdigit() or int(text) < 1:
    raise cli.UsageError(f"--batch_size={text}: expected a positive integer or 'dynamic'.")
  return int(text)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}; see --help.")
  batch_size = parse_batch_size(FLAGS.batch_size)
  run = load_run(FLAGS.workdir, FLAGS.step)
  output = os.path.abspath(FLAGS.output)
  parent = os.path.dirname(output)
  if not os.path.isdir(parent):
    raise cli.UsageError(f"--output={FLAGS.output}: the directory {parent} does not exist.")
  if FLAGS.format == "stablehlo":
    if os.path.isdir(output):
      raise cli.UsageError(f"--output={FLAGS.output} is a directory; stablehlo writes a file.")
    export_stablehlo(run, output, batch_size, FLAGS.platforms)
  else:
    if FLAGS.platforms:
      raise cli.UsageError("--platforms applies to --format=stablehlo only.")
    export_savedmodel(run, output, batch_size)
  print(f"Exported {run.config.model} (step {run.step}) to {output}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
