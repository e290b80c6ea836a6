"""bench/gpu.sh runs end to end before it meets a GPU: tiny sizes on the CPU, every promised JSON.

The script's own sizes are for one H100/H200; RESNET_LN_GPU_SH_TINY=1 shrinks every
size and step count, with the same commands and steps.
"""

import glob
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.sh"
# Step name -> JSON files it promises, in the script's order.
STEPS = {"resnet50_pmap": 1, "resnet50_shard_map": 1, "xla_no_command_buffer": 1,
         "xla_conv_nhwc": 1, "char_lm": 2, "compare_resnet50": 1, "compare_char_lm": 2,
         "compare_torch_compile": 1}


def _env(**extra):
  env = dict(os.environ)
  # This Python first on PATH, as `python3`; one CPU device (not the suite's 8).
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
  env["XLA_FLAGS"] = ""
  env["JAX_PLATFORMS"] = "cpu"
  env.update(extra)
  return env


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="PyTorch (an optional benchmark dependency) is not installed")
def test_gpu_script_writes_every_promised_json_and_prints_the_summary_last(tmp_path):
  out = tmp_path / "out"
  run = subprocess.run(["bash", str(SCRIPT), str(out)], cwd=ROOT, capture_output=True, text=True,
                       env=_env(RESNET_LN_GPU_SH_TINY="1", RESNET_LN_GPU_SH_BUDGET_S="900"),
                       timeout=960)
  assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
  for step, promised in STEPS.items():
    files = glob.glob(str(out / step / "*.json"))
    assert len(files) == promised, (step, files)
    for path in files:
      with open(path) as f:
        assert json.load(f)["benchmark"] in ("throughput", "compare")
    assert (out / step / "log.txt").exists()
  with open(glob.glob(str(out / "xla_no_command_buffer" / "*.json"))[0]) as f:
    assert "--xla_gpu_enable_command_buffer=" in json.load(f)["xla_flags"]
  lines = run.stdout.rstrip("\n").splitlines()
  summary = next(i for i, line in enumerate(lines) if line.startswith("== summary"))
  table = lines[summary + 2:]
  assert [line.split()[0] for line in table if line[:1].strip()] == list(STEPS)
  for step, promised in STEPS.items():
    row = next(line for line in table if line.startswith(step + " "))
    assert row.split()[1] == "ok" and f"{promised}/{promised}" in row, row
  assert (out / "log.txt").read_text().rstrip().endswith(lines[-1].rstrip())


def test_gpu_script_without_ml_collections_says_how_to_fetch_the_wheel(tmp_path):
  stub = tmp_path / "bin"
  stub.mkdir()
  (stub / "python3").write_text("#!/bin/sh\nexit 1\n")  # A Python without ml_collections.
  (stub / "python3").chmod(0o755)
  env = _env(RESNET_LN_WHEELS=str(tmp_path / "no_wheels"))
  env["PATH"] = f"{stub}{os.pathsep}{env['PATH']}"
  run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=60)
  assert run.returncode == 1
  version = importlib.metadata.version("ml_collections")  # The development venv's.
  assert ("python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl "
          f"ml-collections=={version}") in run.stderr


def _python_without_ml_collections():
  """A system Python with pip and without ml_collections, as on the GPU machine's image."""
  for candidate in ("/usr/bin/python3", shutil.which("python3")):
    if not candidate or not os.path.exists(candidate):
      continue
    probe = subprocess.run([candidate, "-c", "import pip; import ml_collections"],
                           capture_output=True, text=True)
    if "ml_collections" in probe.stderr and "No module named 'pip'" not in probe.stderr:
      return candidate
  return None


def test_gpu_script_installs_ml_collections_from_the_wheel_folder(tmp_path):
  python = _python_without_ml_collections()
  if python is None:
    pytest.skip("no Python with pip and without ml_collections on this machine")
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  name = "ml_collections-1.1.0"
  with zipfile.ZipFile(wheels / f"{name}-py3-none-any.whl", "w") as wheel:  # A stand-in.
    wheel.writestr("ml_collections/__init__.py", "STAND_IN = True\n")
    wheel.writestr(f"{name}.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: ml_collections\nVersion: 1.1.0\n")
    wheel.writestr(f"{name}.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")
    wheel.writestr(f"{name}.dist-info/RECORD", "")
  site = tmp_path / "site"
  env = _env(PYTHON=python, RESNET_LN_WHEELS=str(wheels), RESNET_LN_GPU_SH_SITE=str(site),
             RESNET_LN_GPU_SH_ONLY="no_step")
  run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=120)
  assert run.returncode == 0, run.stdout + run.stderr
  assert f"into {site}" in run.stdout and "== summary" in run.stdout
  assert (site / "ml_collections" / "__init__.py").exists()


def test_gpu_script_needs_an_output_folder():
  run = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
  assert run.returncode == 2 and "usage" in run.stderr
