"""The two papers' claims at small scale, on the embedded offline datasets (or none).

  python scripts/paper_claims.py lnlstm       # Layer Normalization, LN-LSTM vs LSTM
  python scripts/paper_claims.py degradation  # Deep Residual Learning, residual vs plain
  python scripts/paper_claims.py invariances  # Layer Normalization, Table 1
  python scripts/paper_claims.py responses    # Deep Residual Learning, Figure 7
  python scripts/paper_claims.py norms        # BatchNorm, LayerNorm, GroupNorm, none x batch
  python scripts/paper_claims.py magnitude    # What LayerNorm erases: the input's scale

`lnlstm` trains `configs/charlm.py:lnlstm` and `:lstm` (the same model, data,
seed and steps, LayerNorm or not) on `pydoc_topics` and plots validation bits
per character against steps. `degradation` trains CIFAR-style ResNet-20/56/110
and plain-20/56/110 on `digits` with `configs/cifar.py`'s recipe (the paper's
initialisation: no zero-initialised residual branches) compressed to a short
schedule, the 110-layer nets warming up at a tenth of the rate as in the paper,
and plots the training error against steps (the paper's Figure 6); a net whose
loss becomes non-finite is reported as diverged.

Each run trains in its own `--workdir/NAME` (rerunning resumes, or just
re-evaluates a finished run); the plot goes to `--plot` (default: docs/) and
the final numbers are printed as a Markdown table.

`invariances` trains nothing: it applies each transformation of the Layer
Normalization paper's Table 1 (section 5.1) to a small random layer and its
random data, and says for BatchNorm, weight normalisation and LayerNorm whether
the normalised output stayed the same (within `INVARIANCE_TOLERANCE`).

`responses` trains plain-20/56 and ResNet-20/56/110 on `digits` upscaled to
32x32 with `configs/cifar.py`'s recipe compressed to a short schedule, then
measures the standard deviation of each 3x3 layer's response (its BatchNorm
output, before the ReLU and the addition) on the held-out digits in eval mode
(`resnet_ln.models.layer_responses`), by layer index and sorted by magnitude.

`norms` trains CIFAR ResNet-20 on `digits` at 32x32 with norm='batch', 'layer',
'group' and None, each at batches of 2, 8 and 64 on one device (so the batch is
the per-device batch, and the one BatchNorm's statistics see), for the same
number of epochs with the learning rate scaled with the square root of the
batch, and reports the test accuracy.

`magnitude` trains the LN-LSTM and the LSTM (`SequenceClassifier`) to tell
whether a random sequence was multiplied by 0.5 or by 2, a label that only the
input's overall scale carries and that LayerNorm of W_x x_t erases; then again
with an extra input channel that is not multiplied (a constant 1), so that the
ratio of the features to it carries the scale.
"""

import argparse
import json
import math
import os
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")  # Files only: no display needed.
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # For `configs`, when run as a script from anywhere.

from configs import charlm  # noqa: E402
from configs import cifar  # noqa: E402
from configs import default  # noqa: E402

NORM_METHODS = ("BatchNorm", "WeightNorm", "LayerNorm")
TRANSFORMATIONS = (
    "weight matrix re-scaling", "weight matrix re-centering", "weight vector re-scaling",
    "dataset re-scaling", "dataset re-centering", "single training case re-scaling")
# Outputs are O(1) (normalised summed inputs). Epsilon (1e-5, against variances near 1) and
# float32 rounding move an invariant output by up to about 2e-5; a transformation the method
# does not absorb moves it by more than 0.1.
INVARIANCE_TOLERANCE = 1e-4


# --- Invariances (Layer Normalization, Table 1) -------------------------------------------------


def normalised_output(method: str, weights, inputs, gain, bias):
  """h = gain * normalise(a) + bias for the summed inputs a = W x of one layer.

  Args:
    method: 'BatchNorm' (each hidden unit over the cases, train mode: batch
      statistics), 'WeightNorm' (a_i = v_i . x / |v_i|, Salimans & Kingma 2016)
      or 'LayerNorm' (each case over its hidden units).
    weights: W, [hidden, inputs].
    inputs: x, [cases, inputs].
    gain, bias: [hidden], fixed (the paper's invariances hold them constant).

  Returns:
    [cases, hidden].
  """
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  summed = inputs @ weights.T
  params = {"scale": gain, "bias": bias}
  if method == "BatchNorm":
    stats = {"mean": jnp.zeros_like(gain), "var": jnp.ones_like(gain)}
    out, _ = nn.BatchNorm(use_running_average=False, epsilon=1e-5).apply(
        {"params": params, "batch_stats": stats}, summed, mutable=["batch_stats"])
    return out
  if method == "LayerNorm":
    return nn.LayerNorm(epsilon=1e-5).apply({"params": params}, summed)
  if method == "WeightNorm":
    return gain * summed / jnp.linalg.norm(weights, axis=1) + bias
  raise ValueError(f"method must be one of {NORM_METHODS}, got {method!r}.")


def transform(name: str, weights, inputs, rng):
  """(W, x) after the transformation `name` of Table 1, with a random scale and shift."""
  import jax  # pylint: disable=import-outside-toplevel

  scale_rng, shift_rng = jax.random.split(rng)
  delta = jax.random.uniform(scale_rng, (), minval=2.0, maxval=4.0)
  gamma = jax.random.normal(shift_rng, (inputs.shape[1],))
  if name == "weight matrix re-scaling":  # W -> delta W.
    return delta * weights, inputs
  if name == "weight matrix re-centering":  # W -> W + 1 gamma^T: every a_i of a case moves alike.
    return weights + gamma[None, :], inputs
  if name == "weight vector re-scaling":  # w_0 -> delta w_0: one hidden unit's incoming weights.
    return weights.at[0].multiply(delta), inputs
  if name == "dataset re-scaling":  # x -> delta x for every case.
    return weights, delta * inputs
  if name == "dataset re-centering":  # x -> x + gamma for every case.
    return weights, inputs + gamma[None, :]
  if name == "single training case re-scaling":  # x_0 -> delta x_0, the other cases unchanged.
    return weights, inputs.at[0].multiply(delta)
  raise ValueError(f"transformation must be one of {TRANSFORMATIONS}, got {name!r}.")


def invariance_changes(seed: int = 0, cases: int = 16, num_inputs: int = 12,
                       hidden: int = 8) -> dict[str, dict[str, float]]:
  """method -> transformation -> max |h(transformed) - h| over the whole [cases, hidden] output."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  keys = jax.random.split(jax.random.PRNGKey(seed), 5 + len(TRANSFORMATIONS))
  weights = jax.random.normal(keys[0], (hidden, num_inputs)) / jnp.sqrt(num_inputs)
  # Data with a non-zero mean, so re-centering is not hidden by data already centred.
  inputs = (jax.random.normal(keys[1], (cases, num_inputs))
            + jax.random.normal(keys[2], (num_inputs,)))
  gain = 1.0 + 0.2 * jax.random.normal(keys[3], (hidden,))
  bias = 0.2 * jax.random.normal(keys[4], (hidden,))
  changes = {}
  for method in NORM_METHODS:
    before = normalised_output(method, weights, inputs, gain, bias)
    changes[method] = {}
    for name, key in zip(TRANSFORMATIONS, keys[5:]):
      after = normalised_output(method, *transform(name, weights, inputs, key), gain, bias)
      changes[method][name] = float(jnp.max(jnp.abs(after - before)))
  return changes


def invariance_table(changes: dict[str, dict[str, float]]) -> dict[str, dict[str, str]]:
  """method -> transformation -> 'invariant' or 'not invariant' (INVARIANCE_TOLERANCE)."""
  return {method: {name: "invariant" if change <= INVARIANCE_TOLERANCE else "not invariant"
                   for name, change in row.items()} for method, row in changes.items()}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def plot_invariances(changes: dict[str, dict[str, float]], path: str) -> None:
  values = np.log10([[max(changes[m][t], 1e-12) for t in TRANSFORMATIONS] for m in NORM_METHODS])
  fig, ax = plt.subplots(figsize=(9, 3.2))
  image = ax.imshow(values, cmap="coolwarm", vmin=-7, vmax=1)
  for (i, j), value in np.ndenumerate(values):
    verdict = "invariant" if value <= np.log10(INVARIANCE_TOLERANCE) else "not invariant"
    ax.text(j, i, f"{10**value:.0e}\n{verdict}", ha="center", va="center", fontsize=7)
  ax.set_xticks(range(len(TRANSFORMATIONS)),
                [t.replace(" re-", "\nre-").replace("case ", "case\n") for t in TRANSFORMATIONS],
                fontsize=7)
  ax.set_yticks(range(len(NORM_METHODS)), NORM_METHODS, fontsize=8)
  fig.colorbar(image, ax=ax, label="log10 max |change|")
  ax.set_title(f"Change of the normalised output (invariant: <= {INVARIANCE_TOLERANCE:g})",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def invariances(args: argparse.Namespace) -> int:
  changes = invariance_changes(seed=args.seed)
  table = invariance_table(changes)
  path = plot_path(args)
  plot_invariances(changes, path)
  header = ["method", *TRANSFORMATIONS]
  print(markdown_table(header, [[m, *(table[m][t] for t in TRANSFORMATIONS)] for m in table]))
  print(f"\nInvariant: max |change| of the normalised output <= {INVARIANCE_TOLERANCE:g} "
        "(outputs are O(1)). The changes measured:\n")
  print(markdown_table(header, [[m, *(f"{changes[m][t]:.1e}" for t in TRANSFORMATIONS)]
                                for m in changes]))
  print(f"\nPlot: {path}")
  return 0


# --- Trained claims: LN-LSTM vs LSTM, degradation ------------------------------------------------


def short_cifar_config(arg: str, steps: int, batch_size: int, image_size: int | None = None):
  """configs/cifar.py:ARG (e.g. 'resnet110') on digits, its 64k-iteration schedule compressed
  to `steps` of `batch_size`; image_size None keeps the digits' 8x8.

  The paper's divisions by 10 at 50% and 75% of training; ResNet-110 and deeper first warm
  up at a tenth of the rate (the paper: 0.01 for 400 of 64k iterations) for 5% of the steps.
  """
  config = cifar.get_config(arg)
  config.dataset = "digits"
  config.image_size = image_size
  config.batch_size = batch_size
  config.lr_base_batch_size = 128  # The paper's 0.1 is for batch 128: scaled linearly.
  config.num_train_steps = steps
  halfway, late = steps // 2, (3 * steps) // 4
  if len(config.lr_boundaries) == 3:  # configs/cifar.py's warm-up boundary (110+ layers).
    config.lr_boundaries = (max(steps // 20, 1), halfway, late)
  else:
    config.lr_boundaries = (halfway, late)
  config.log_every_steps = 10
  config.eval_every_steps = steps
  config.checkpoint_every_steps = steps
  return config


def lnlstm_runs(steps: int) -> dict:
  runs = {}
  for arg in charlm.ARGS:
    config = charlm.get_config(arg)
    config.num_train_steps = steps
    config.eval_every_steps = max(steps // 10, 1)
    config.checkpoint_every_steps = steps
    runs[f"charlm_{arg}"] = config
  return runs


DEGRADATION_NETS = tuple(f"{kind}{depth}" for kind in ("plain", "resnet")
                         for depth in (20, 56, 110))


def degradation_runs(steps: int, batch_size: int) -> dict:
  """configs/cifar.py on digits at their own 8x8, the schedule compressed to `steps`."""
  return {f"digits_{arg}": short_cifar_config(arg, steps, batch_size)
          for arg in DEGRADATION_NETS}


def read_metrics(workdir: str, split: str) -> dict[int, dict]:
  """step -> record; a step logged twice (a resumed run) keeps its last record."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f) if r["split"] == split}


def plot_lnlstm(results: dict, path: str) -> None:
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for name, color in (("charlm_lnlstm", "C0"), ("charlm_lstm", "C3")):
    label = "LN-LSTM" if name.endswith("lnlstm") else "LSTM"
    train, evals = results[name]["train"], results[name]["eval"]
    ax.plot(sorted(train), [train[s]["bits_per_char"] for s in sorted(train)], color=color,
            alpha=0.3, lw=1)
    ax.plot(sorted(evals), [evals[s]["bits_per_char"] for s in sorted(evals)], color=color,
            marker="o", ms=3, label=f"{label} validation")
  ax.set(xlabel="step", ylabel="bits per character",
         title="Character LM on pydoc_topics (faint: train)")
  ax.set_ylim(top=min(ax.get_ylim()[1], 4.0))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def training_error(records: dict[int, dict]) -> tuple[list[int], list[float]]:
  """Steps and training error (%) of a run's train records: each the mean over its log window."""
  steps = sorted(records)
  return steps, [100 * (1 - records[s]["accuracy"]) for s in steps]


def plot_degradation(results: dict, path: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, kind in zip(axes, ("plain", "resnet")):
    for depth, style in ((20, ":"), (56, "--"), (110, "-")):
      result = results[f"digits_{kind}{depth}"]
      if "diverged" in result:  # Its curve up to the non-finite step, ending in a cross.
        label, marker = f"{kind}-{depth} (diverged)", dict(marker="x", markevery=[-1])
      else:
        label, marker = f"{kind}-{depth} (test accuracy {result['final']['accuracy']:.3f})", {}
      ax.plot(*training_error(result["train"]), style, label=label, **marker)
    warmup_end = results[f"digits_{kind}110"]["config"].lr_boundaries[0]
    ax.axvline(warmup_end, color="gray", lw=0.8, alpha=0.5)
    ax.set(xlabel=f"step (gray: end of the 110-layer net's warm-up at step {warmup_end})",
           title=f"{'Plain' if kind == 'plain' else 'Residual'} nets on digits")
    # Logarithmic above 1%, linear below: a training error of exactly 0 stays on the plot.
    ax.set_yscale("symlog", linthresh=1.0)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")  # Below the deep nets' curves, left of the 20's.
  axes[0].set_ylabel("training error (%)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def degradation(args: argparse.Namespace) -> int:
  steps, batch_size = args.steps or 500, args.batch_size or 64
  # Plain-110 may not train at all: a non-finite loss is reported, not raised.
  results = train_runs(degradation_runs(steps, batch_size), args.workdir, allow_nonfinite=True)
  path = plot_path(args)
  plot_degradation(results, path)
  rows = []
  for name, result in results.items():
    net = name.removeprefix("digits_").replace("resnet", "ResNet-").replace("plain", "plain-")
    _, errors = training_error(result["train"])
    if "diverged" in result:
      rows.append([net, "diverged", f"{errors[-1]:.1f}" if errors else "-", "-", "-"])
      continue
    last_train = result["train"][max(result["train"])]
    rows.append([net, str(result["final"]["step"]), f"{errors[-1]:.1f}",
                 f"{last_train['loss']:.3f}", f"{result['final']['accuracy']:.3f}"])
  print(markdown_table(["net", "steps", "final training error (%)", "final train loss",
                        "test accuracy"], rows))
  for name, result in results.items():
    if "diverged" in result:
      print(f"\n{name}: {result['diverged']}")
  print(f"\n{steps} steps of {batch_size}; training error: the mean over the last "
        f"{results['digits_resnet20']['config'].log_every_steps} steps' batches. Plot: {path}")
  return 0


RESPONSE_NETS = ("plain20", "plain56", "resnet20", "resnet56", "resnet110")


def responses_runs(steps: int, batch_size: int) -> dict:
  """configs/cifar.py on digits at 32x32, its step schedule compressed to `steps`."""
  return {f"digits32_{arg}": short_cifar_config(arg, steps, batch_size, image_size=32)
          for arg in RESPONSE_NETS}


def held_out_images(config) -> np.ndarray:
  """The real (unpadded) images of the run's eval split, [examples, height, width, channels]."""
  from resnet_ln.data import pipeline  # pylint: disable=import-outside-toplevel

  batches = list(pipeline.create_eval_iterator(config))
  images = np.concatenate([b["image"] for b in batches])
  return images[np.concatenate([b["mask"] for b in batches]) > 0]


def run_responses(result: dict) -> tuple[list[float], float]:
  """The trained run's per-layer response std on its held-out images (stem first), and the
  mean |scale| of those BatchNorms (the learned gains the responses follow)."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  from resnet_ln.models import get_model  # pylint: disable=import-outside-toplevel
  from resnet_ln.models import layer_responses  # pylint: disable=import-outside-toplevel
  from resnet_ln.train import load_variables  # pylint: disable=import-outside-toplevel

  config = result["config"]
  model = get_model(config.model, num_classes=10, **config.model_kwargs)
  variables = load_variables(result["workdir"])
  stds = layer_responses(model, variables, held_out_images(config))
  params = traverse_util.flatten_dict(variables["params"], sep="/")
  scales = [np.abs(np.asarray(params[f"{path}/scale"])).mean() for path in stds]
  return list(stds.values()), float(np.mean(scales))


def plot_responses(results: dict, path: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for i, arg in enumerate(RESPONSE_NETS):
    stds = results[f"digits32_{arg}"]["stds"]
    style = dict(ls="--" if arg.startswith("plain") else "-", color=f"C{i}", lw=1.2,
                 label=arg.replace("resnet", "ResNet-").replace("plain", "plain-"))
    axes[0].plot(range(1, len(stds) + 1), stds, **style)
    axes[1].plot(range(1, len(stds) + 1), sorted(stds, reverse=True), **style)
  axes[0].set(xlabel="layer index (original)", ylabel="std of the layer response",
              title="3x3 layers in network order")
  axes[1].set(xlabel="layer index (sorted by magnitude)", title="Sorted by magnitude")
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[1].legend()
  fig.suptitle("Layer responses on the held-out digits (BatchNorm output, before ReLU/addition)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def responses(args: argparse.Namespace) -> int:
  results = train_runs(responses_runs(args.steps or 150, args.batch_size or 32), args.workdir)
  for result in results.values():
    result["stds"], result["mean_scale"] = run_responses(result)
  path = plot_path(args)
  plot_responses(results, path)
  rows = []
  for name, result in results.items():
    stds = np.asarray(result["stds"])
    rows.append([name.removeprefix("digits32_"), str(result["final"]["step"]),
                 f"{result['final']['accuracy']:.3f}", str(len(stds)), f"{stds.mean():.3f}",
                 f"{np.median(stds):.3f}", f"{stds[1:].mean():.3f}",
                 f"{result['mean_scale']:.3f}"])
  print(markdown_table(["net", "steps", "test accuracy", "3x3 layers", "mean std",
                        "median std", "mean std without the stem", "mean BN scale"], rows))
  print(f"\nPlot: {path}")
  return 0


NORMS = ("batch", "layer", "group", None)
NORM_BATCH_SIZES = (2, 8, 64)


def norms_runs(epochs: float) -> dict:
  """ResNet-20 on digits at 32x32: each norm at each batch size, the same epochs."""
  runs = {}
  for norm in NORMS:
    for batch_size in NORM_BATCH_SIZES:
      config = default.get_config()
      config.image_size = 32
      config.model_kwargs.norm = norm
      # One device: on N, pmap's synchronised BatchNorm would see N times the batch.
      config.num_devices = 1
      config.batch_size = batch_size
      # 0.1 at 128 scaled with the square root of the batch (0.0125 at 2, 0.071 at 64): in a
      # schedule of a few epochs the linear rule (0.0016 at 2) leaves every net untrained.
      config.learning_rate = 0.1 * math.sqrt(batch_size / 128)
      config.num_epochs = epochs
      config.warmup_epochs = 0.1
      config.log_every_steps = max(1442 // batch_size // 4, 1)  # About 4 records an epoch.
      config.eval_every_steps = 0
      config.checkpoint_every_steps = 100_000  # Only the final one.
      runs[f"digits32_{norm or 'none'}_batch{batch_size}"] = config
  return runs


def plot_norms(results: dict, path: str) -> None:
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  width = 0.8 / len(NORMS)
  for i, norm in enumerate(NORMS):
    runs = [results[f"digits32_{norm or 'none'}_batch{b}"] for b in NORM_BATCH_SIZES]
    positions = [k + (i - 1.5) * width for k in range(len(NORM_BATCH_SIZES))]
    bars = ax.bar(positions, [run.get("final", {}).get("accuracy", 0.0) for run in runs],
                  width, label=f"norm={norm!r}" if norm else "no norm")
    ax.bar_label(bars, ["diverged" if "diverged" in run else f"{run['final']['accuracy']:.2f}"
                        for run in runs], fontsize=7, rotation=90, padding=2)
  ax.set_xticks(range(len(NORM_BATCH_SIZES)), [f"batch {b}" for b in NORM_BATCH_SIZES])
  ax.set(ylabel="test accuracy", ylim=(0, 1.15),
         title="ResNet-20 on digits at 32x32, the same epochs per run")
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8, loc="upper center", ncol=len(NORMS))
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def norms(args: argparse.Namespace) -> int:
  epochs = args.epochs or 2.5
  results = train_runs(norms_runs(epochs), args.workdir, allow_nonfinite=True)
  path = plot_path(args)
  plot_norms(results, path)
  rows = []
  for norm in NORMS:
    row = [f"`{norm!r}`" if norm else "`None`"]
    for batch_size in NORM_BATCH_SIZES:
      result = results[f"digits32_{norm or 'none'}_batch{batch_size}"]
      row.append("diverged" if "diverged" in result else f"{result['final']['accuracy']:.3f}")
    rows.append(row)
  print(markdown_table(["norm", *(f"batch {b}" for b in NORM_BATCH_SIZES)], rows))
  print(f"\nTest accuracy after {epochs:g} epochs. Plot: {path}")
  return 0


# --- What LayerNorm erases: the input's overall scale -------------------------------------------

MAGNITUDE_SCALES = (0.5, 2.0)  # Label 0: the sequence was multiplied by 0.5; label 1: by 2.


def magnitude_batch(rng, batch_size: int, time: int = 16, features: int = 4,
                    scale_channel: bool = False):
  """Random sequences [batch, time, features] times 0.5 or 2, and which one (the label).

  With `scale_channel`, a last channel of ones is appended after the scaling.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  z_rng, label_rng = jax.random.split(rng)
  labels = jax.random.bernoulli(label_rng, 0.5, (batch_size,)).astype(jnp.int32)
  scales = jnp.asarray(MAGNITUDE_SCALES)[labels]
  inputs = scales[:, None, None] * jax.random.normal(z_rng, (batch_size, time, features))
  if scale_channel:
    inputs = jnp.concatenate([inputs, jnp.ones((batch_size, time, 1))], axis=-1)
  return inputs, labels


def train_magnitude(layer_norm: bool, scale_channel: bool, steps: int, seed: int = 0,
                    batch_size: int = 64, eval_size: int = 2048) -> dict:
  """Trains a SequenceClassifier on the magnitude task; returns its curve and final accuracy."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from resnet_ln.models import SequenceClassifier  # pylint: disable=import-outside-toplevel

  model = SequenceClassifier(num_classes=2, features=32, layer_norm=layer_norm)
  init_rng, data_rng, eval_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  eval_inputs, eval_labels = magnitude_batch(eval_rng, eval_size, scale_channel=scale_channel)
  params = model.init(init_rng, eval_inputs[:1])["params"]
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  def loss_fn(params, inputs, labels):
    logits = model.apply({"params": params}, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def train_step(params, opt_state, rng):
    inputs, labels = magnitude_batch(rng, batch_size, scale_channel=scale_channel)
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, labels)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def accuracy(params):
    logits = model.apply({"params": params}, eval_inputs)
    return jnp.mean(jnp.argmax(logits, -1) == eval_labels)

  curve = {}
  for step in range(1, steps + 1):
    params, opt_state, loss = train_step(params, opt_state, jax.random.fold_in(data_rng, step))
    if step % max(steps // 20, 1) == 0 or step == steps:
      curve[step] = {"loss": float(loss), "accuracy": float(accuracy(params))}
  return {"curve": curve, "final": curve[steps]}


MAGNITUDE_RUNS = {  # name -> (layer_norm, scale_channel)
    "LN-LSTM": (True, False),
    "LSTM": (False, False),
    "LN-LSTM + unscaled channel": (True, True),
    "LSTM + unscaled channel": (False, True),
}


def plot_magnitude(results: dict, path: str) -> None:
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for i, (name, result) in enumerate(results.items()):
    steps = sorted(result["curve"])
    ax.plot(steps, [result["curve"][s]["accuracy"] for s in steps], color=f"C{i}",
            ls="-" if "unscaled" in name else "--", marker="o", ms=3, label=name)
  ax.axhline(0.5, color="gray", lw=0.8)
  ax.set(xlabel="step", ylabel="held-out accuracy", ylim=(0.3, 1.02),
         title="Was the sequence multiplied by 0.5 or by 2?")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def magnitude(args: argparse.Namespace) -> int:
  steps = args.steps or 400
  results = {name: train_magnitude(layer_norm, scale_channel, steps, seed=args.seed)
             for name, (layer_norm, scale_channel) in MAGNITUDE_RUNS.items()}
  path = plot_path(args)
  plot_magnitude(results, path)
  print(markdown_table(["model", "input", "final train loss", "held-out accuracy"], [
      [name.split(" + ")[0], "with an unscaled channel of ones" if "+" in name else "scaled only",
       f"{r['final']['loss']:.3f}", f"{r['final']['accuracy']:.3f}"]
      for name, r in results.items()]))
  print(f"\n{steps} steps of 64 sequences (16 steps x 4 features), Adam 3e-3, 32 units; "
        f"accuracy on 2,048 held-out sequences. Plot: {path}")
  return 0


def train_runs(runs: dict, workdir: str, allow_nonfinite: bool = False) -> dict:
  """Trains each run in `workdir/NAME` (resuming); name -> its train and eval records.

  With `allow_nonfinite`, a run whose loss becomes inf/NaN is recorded as
  {'diverged': message} instead of stopping the others.
  """
  from absl import logging  # pylint: disable=import-outside-toplevel
  from resnet_ln import train  # pylint: disable=import-outside-toplevel

  logging.set_verbosity(logging.INFO)  # The trainer's progress lines, as under train.py.
  results = {}
  for name, config in runs.items():
    run_dir = os.path.join(workdir, name)
    try:
      train.train_and_evaluate(config, run_dir)
    except train.NonFiniteError as error:
      if not allow_nonfinite:
        raise
      # Its train records up to the non-finite step, if it logged any.
      logged = os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
      results[name] = {"diverged": str(error), "config": config,
                       "train": read_metrics(run_dir, "train") if logged else {}}
      continue
    evals = read_metrics(run_dir, "eval")
    results[name] = {"train": read_metrics(run_dir, "train"), "eval": evals,
                     "final": evals[max(evals)], "workdir": run_dir, "config": config}
  return results


def plot_path(args: argparse.Namespace) -> str:
  path = args.plot or os.path.join(ROOT, "docs", f"{args.claim}.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return path


def lnlstm(args: argparse.Namespace) -> int:
  results = train_runs(lnlstm_runs(args.steps or 600), args.workdir)
  path = plot_path(args)
  plot_lnlstm(results, path)
  print("\n| run | steps | final train loss | eval bits_per_char |\n| --- | --- | --- | --- |")
  for name, result in results.items():
    last_train = result["train"][max(result["train"])]
    print(f"| {name} | {result['final']['step']} | {last_train['loss']:.4f} | "
          f"{result['final']['bits_per_char']:.4f} |")
  print(f"\nPlot: {path}")
  return 0


CLAIMS = {
    "lnlstm": lnlstm,
    "degradation": degradation,
    "invariances": invariances,
    "responses": responses,
    "norms": norms,
    "magnitude": magnitude,
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("claim", choices=tuple(CLAIMS))
  parser.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "claims"))
  parser.add_argument("--plot", default=None, help="PNG path (default: docs/CLAIM.png).")
  parser.add_argument("--steps", type=int, default=None,
                      help="Train steps per run (default: 600 lnlstm, 500 degradation, "
                      "150 responses, 400 magnitude).")
  parser.add_argument("--epochs", type=float, default=None, help="norms: epochs per run (2.5).")
  parser.add_argument("--batch-size", type=int, default=None,
                      help="responses, degradation: the batch size (default: responses 32, "
                           "degradation 64).")
  parser.add_argument("--seed", type=int, default=0, help="invariances, magnitude: the seed.")
  args = parser.parse_args(argv)
  return CLAIMS[args.claim](args)


if __name__ == "__main__":
  sys.exit(main())
