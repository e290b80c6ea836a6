"""The two papers' central claims at small scale, on the embedded offline datasets.

  python scripts/paper_claims.py lnlstm       # Layer Normalization, LN-LSTM vs LSTM
  python scripts/paper_claims.py degradation  # Deep Residual Learning, residual vs plain

`lnlstm` trains `configs/charlm.py:lnlstm` and `:lstm` (the same model, data,
seed and steps, LayerNorm or not) on `pydoc_topics` and plots validation bits
per character against steps. `degradation` trains CIFAR-style ResNet-20/56 and
plain-20/56 on `digits` with the paper's initialisation (no zero-initialised
residual branches) and plots the training error: the plain net degrades with
depth, the residual net of equal depth does not.

Each run trains in its own `--workdir/NAME` (rerunning resumes, or just
re-evaluates a finished run); the plot goes to `--plot` (default: docs/) and
the final numbers are printed as a Markdown table.
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # Files only: no display needed.
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # For `configs`, when run as a script from anywhere.

from configs import charlm  # noqa: E402
from configs import default  # noqa: E402


def lnlstm_runs(steps: int) -> dict:
  runs = {}
  for arg in charlm.ARGS:
    config = charlm.get_config(arg)
    config.num_train_steps = steps
    config.eval_every_steps = max(steps // 10, 1)
    config.checkpoint_every_steps = steps
    runs[f"charlm_{arg}"] = config
  return runs


def degradation_runs(steps: int) -> dict:
  runs = {}
  for kind in ("plain", "resnet"):
    for depth in (20, 56):
      config = default.get_config()
      config.model = f"cifar_{kind}{depth}"
      # The paper's initialisation: a plain net has no residual branch to zero.
      config.model_kwargs.zero_init_residual = False
      config.weight_decay = 1e-4
      config.num_train_steps = steps
      config.log_every_steps = 10
      config.eval_every_steps = steps
      config.checkpoint_every_steps = steps
      runs[f"digits_{kind}{depth}"] = config
  return runs


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


def plot_degradation(results: dict, path: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, kind in zip(axes, ("plain", "resnet")):
    for depth, style in ((20, "--"), (56, "-")):
      result = results[f"digits_{kind}{depth}"]
      steps = sorted(result["train"])
      ax.plot(steps, [100 * (1 - result["train"][s]["accuracy"]) for s in steps], style,
              label=f"{kind}-{depth} (test accuracy {result['final']['accuracy']:.3f})")
    ax.set(xlabel="step", title=f"{'Plain' if kind == 'plain' else 'Residual'} nets on digits")
    # Logarithmic above 1%, linear below: a training error of exactly 0 stays on the plot.
    ax.set_yscale("symlog", linthresh=1.0)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
  axes[0].set_ylabel("training error (%)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("claim", choices=("lnlstm", "degradation"))
  parser.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "claims"))
  parser.add_argument("--plot", default=None, help="PNG path (default: docs/CLAIM.png).")
  parser.add_argument("--steps", type=int, default=None,
                      help="Train steps per run (default: 600 lnlstm, 500 degradation).")
  args = parser.parse_args(argv)

  from absl import logging  # pylint: disable=import-outside-toplevel
  from resnet_ln import train  # pylint: disable=import-outside-toplevel

  logging.set_verbosity(logging.INFO)  # The trainer's progress lines, as under train.py.

  if args.claim == "lnlstm":
    runs, plot = lnlstm_runs(args.steps or 600), plot_lnlstm
  else:
    runs, plot = degradation_runs(args.steps or 500), plot_degradation
  results = {}
  for name, config in runs.items():
    workdir = os.path.join(args.workdir, name)
    train.train_and_evaluate(config, workdir)
    evals = read_metrics(workdir, "eval")
    results[name] = {"train": read_metrics(workdir, "train"), "eval": evals,
                     "final": evals[max(evals)]}

  path = args.plot or os.path.join(ROOT, "docs", f"{args.claim}.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  plot(results, path)
  metric = "bits_per_char" if args.claim == "lnlstm" else "accuracy"
  print(f"\n| run | steps | final train loss | eval {metric} |\n| --- | --- | --- | --- |")
  for name, result in results.items():
    last_train = result["train"][max(result["train"])]
    print(f"| {name} | {result['final']['step']} | {last_train['loss']:.4f} | "
          f"{result['final'][metric]:.4f} |")
  print(f"\nPlot: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
