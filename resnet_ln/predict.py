"""Classifies image files with a trained run, printing the top classes and their probabilities.

  python -m resnet_ln.predict --workdir=DIR FILE_OR_FOLDER ... [--top_k=5] [--json]

Each image gets the run's eval preprocessing: decoded to the run's channels
(grayscale, RGB or RGBA files alike), resized (with the ImageNet recipe: the
central 224/256 crop first) to the run's image size, normalised with the run's
mean and std. Folders are searched for image files. Classes are named by dataset.json's
`label_names` when the run has them, else by index. A file that cannot be read
is reported and skipped.
"""

import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from absl import flags

from resnet_ln import cli
from resnet_ln.run import Run, load_run

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined by `__main__` only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "The classification run's directory (as given to train.py).")
  flags.DEFINE_integer("step", None, "Checkpoint step; default: the newest.")
  flags.DEFINE_integer("top_k", 5, "Classes to show per image.")
  flags.DEFINE_integer("batch_size", 64, "Images per model call.")
  flags.DEFINE_bool("json", False, "One JSON object per image instead of text.")
  flags.mark_flag_as_required("workdir")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


def image_files(paths: Sequence[str]) -> Iterator[str]:
  """The files of `paths`, with folders replaced by the image files under them (sorted)."""
  for path in paths:
    if os.path.isdir(path):
      for root, dirs, files in os.walk(path):
        dirs.sort()
        yield from (os.path.join(root, name) for name in sorted(files)
                    if name.lower().endswith(IMAGE_EXTENSIONS))
    else:
      yield path


def load_image(path: str, run: Run) -> np.ndarray:
  """The file at `path` as the run's eval preprocessing makes it: uint8 [height, width, channels].

  Raises:
    OSError, ValueError: the file cannot be read or decoded as an image.
  """
  # TensorFlow decodes as the training pipeline does; imported here, so that
  # `--help` and the other commands do not load it.
  from resnet_ln.data import preprocess  # pylint: disable=import-outside-toplevel
  from resnet_ln.data.cpu_tensorflow import tf  # pylint: disable=import-outside-toplevel

  height, _, channels = run.input_shape
  with open(path, "rb") as f:
    contents = f.read()
  # The eval branch of the training pipeline's decoder (`pipeline._decoder`), from any
  # image size: the run's recipe (config.augment's) with its eval crop and resize.
  recipe = preprocess.recipe(run.info.name, run.config.augment, height)
  try:
    return preprocess.preprocess_image(
        run.info.name, tf.constant(contents), None, image_shape=(None, None, channels),
        image_size=height, augment=False, recipe=recipe).numpy()
  except (tf.errors.InvalidArgumentError, ValueError) as e:
    # TensorFlow's message, without its op and device decorations.
    reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", getattr(e, "message", str(e))).strip()
    raise ValueError(f"cannot be decoded as an image: {reason}") from None


def normalize(images: np.ndarray, run: Run) -> np.ndarray:
  """uint8 images -> float32 (x / 255 - mean) / std per channel, as the run was trained."""
  mean, std = (np.asarray(v, np.float32) for v in run.normalization)
  return (images.astype(np.float32) / 255 - mean) / std


def predict_files(run: Run, paths: Sequence[str], top_k: int = 5,
                  batch_size: int = 64) -> list[dict[str, Any]]:
  """Top-k classes of each image file: `{'file', 'top_k': [{'label', 'index', 'probability'}]}`,
  or `{'file', 'error'}` for a file that cannot be read.

  Raises:
    cli.UsageError: not a classification run, or no file given.
  """
  if run.task != "classification":
    raise cli.UsageError(f"{run.workdir} is a {run.task} run ({run.config.model} on "
                         f"{run.info.name}): predict classifies images; use resnet_ln.sample "
                         "for a language model.")
  if not 1 <= top_k:
    raise cli.UsageError(f"--top_k={top_k} must be >= 1.")
  top_k = min(top_k, run.info.num_classes)
  results, images = [], []
  for path in image_files(paths):
    try:
      images.append(load_image(path, run))
      results.append({"file": path})
    except (OSError, ValueError) as e:
      results.append({"file": path, "error": str(getattr(e, "strerror", None) or e)})
  if not results:
    raise cli.UsageError("no image files given (or the folders hold none); pass files or "
                         "folders after the flags.")
  probabilities = _probabilities(run, np.stack(images), batch_size) if images else []
  names = run.label_names
  readable = (r for r in results if "error" not in r)
  for result, probs in zip(readable, probabilities):
    order = np.argsort(-probs, kind="stable")[:top_k]
    result["top_k"] = [{"label": names[i] if i < len(names) else str(i), "index": int(i),
                        "probability": float(probs[i])} for i in order]
  return results


def _probabilities(run: Run, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Softmax of the model on uint8 `images`, in calls of `batch_size` (the last one padded)."""
  # The variables are an argument, not constants folded into the compiled program.
  predict = jax.jit(lambda variables, x: jax.nn.softmax(
      run.model.apply(variables, x, train=False)))
  batch_size = min(batch_size, len(images))
  out = []
  for start in range(0, len(images), batch_size):
    batch = normalize(images[start:start + batch_size], run)
    padding = batch_size - len(batch)
    batch = np.pad(batch, [(0, padding)] + [(0, 0)] * (batch.ndim - 1))
    out.append(np.asarray(predict(run.variables, batch))[:batch_size - padding])
  return np.concatenate(out)


def main(argv: list[str]) -> None:
  run = load_run(FLAGS.workdir, FLAGS.step)
  results = predict_files(run, argv[1:], FLAGS.top_k, FLAGS.batch_size)
  for result in results:
    if FLAGS.json:
      print(json.dumps(result))
    elif "error" in result:
      print(f"{result['file']}: error: {result['error']}")
    else:
      classes = ", ".join(f"{c['label']} ({c['probability']:.3f})" for c in result["top_k"])
      print(f"{result['file']}: {classes}")
  if all("error" in r for r in results):
    raise cli.UsageError("none of the files could be read as images.")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
