"""Where results go and how they print: JSON file names and the table row of a result.

No JAX here: `bench.report` renders RESULTS.md from the JSON files on any machine.
"""

import os
import re
from typing import Any

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
HEADER = ("model", "config", "dtype", "parallel", "batch", "train ex/s", "tokens/s", "step ms",
          "TFLOP/s", "MFU", "compile s", "eval ex/s", "peak MiB")


def output_path(result: dict[str, Any], output: str) -> str:
  """`output` when it names a .json file, else an auto-named file in it (or bench/results)."""
  if output.endswith(".json"):
    return output
  kwargs = result["model_kwargs"]
  if result["seq_len"]:
    shape = (f"t{result['seq_len']}h{kwargs['features']}l{kwargs['num_layers']}"
             + ("_ln" if kwargs["layer_norm"] else "_noln")
             + (f"_u{kwargs['unroll']}" if kwargs.get("unroll", 1) > 1 else ""))
  else:
    shape = f"{result['input_shape'][0]}px"
  stamp = re.sub(r"[-:]", "", result["date"])[:15]
  device = re.sub(r"[^a-z0-9]+", "-", result["device_kind"].lower()).strip("-")
  name = (f"{device}_{result['model']}_{shape}_{result['dtype']}_{result['parallelism']}"
          f"x{result['num_devices']}_b{result['batch_size']}_{stamp}.json")
  return os.path.join(output or RESULTS_DIR, name)


def table_row(result: dict[str, Any]) -> tuple[str, ...]:
  """The printed (and reported) figures of one result."""
  train, evaluation = result["train"], result["eval"]
  kwargs = result["model_kwargs"]
  if result["seq_len"]:
    config = (f"T={result['seq_len']} H={kwargs['features']} L={kwargs['num_layers']} "
              + ("LN" if kwargs["layer_norm"] else "no LN")
              + (f" unroll={kwargs['unroll']}" if kwargs.get("unroll", 1) > 1 else ""))
  else:
    config = "x".join(str(d) for d in result["input_shape"])
  memory = result["peak_bytes_in_use"]
  return (
      result["model"], config, result["dtype"], f"{result['parallelism']} x{result['num_devices']}",
      str(result["batch_size"]),
      f"{train['examples_per_s']['median']:,.1f} ±{50 * train['examples_per_s']['spread']:.0f}%",
      f"{train['tokens_per_s']['median']:,.0f}" if train["tokens_per_s"] else "-",
      f"{train['step_time_ms']['median']:.2f}",
      f"{train['tflops_per_s']:.3f}" if train["tflops_per_s"] else "-",
      f"{100 * train['mfu']:.1f}%" if train.get("mfu") else "-",
      f"{train['compile_s']:.1f}",
      f"{evaluation['examples_per_s']['median']:,.1f}" if evaluation else "-",
      f"{memory / 2**20:,.0f}" if memory else "-",
  )
