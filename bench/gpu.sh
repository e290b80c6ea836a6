#!/usr/bin/env bash
# The GPU benchmark rows in one run, on a machine with one H100 or H200:
#
#   bash bench/gpu.sh OUTDIR          # from the repository root; about 8 minutes at most
#
# Writes into OUTDIR one folder per step (its JSON results and log.txt) and
# OUTDIR/log.txt (everything), and prints a summary table last. Steps, in this
# order (the slowest to compile last); each runs under `timeout`, capped by what is left of the
# 8-minute budget, so one hang cannot eat it (a step with too little time left is
# skipped and says so):
#
#   resnet50_pmap          ResNet-50, 224x224, batch 256, bfloat16, the trainer's pmap step
#   resnet50_shard_map     the same under shard_map
#   xla_no_command_buffer  resnet50_pmap's train step, XLA_FLAGS=--xla_gpu_enable_command_buffer=
#                          (no CUDA-graph command buffers)
#   xla_conv_nhwc          resnet50_pmap's train step, XLA_FLAGS=--xla_gpu_force_conv_nhwc=true
#                          (cuDNN convolutions always in NHWC)
#   char_lm                char LM 2 x 1024, batch 256, 128 steps, LN and plain, float32,
#                          each beside JAX's cuDNN LSTM (jax.experimental.rnn)
#   compare_resnet50       bench.compare: resnet_ln vs PyTorch eager (bfloat16 autocast,
#                          channels_last) at batch 128
#   compare_char_lm        bench.compare: LSTM and LN-LSTM char LMs 2 x 1024, batch 256,
#                          float32, vs flax's LSTM, both cuDNN LSTMs and a TorchScript LN-LSTM
#   compare_torch_compile  bench.compare: resnet50 batch 128 under torch.compile
#
# Whatever the budget cut is listed as skipped; rerun those steps alone with
# RESNET_LN_GPU_SH_ONLY=name,name into another OUTDIR.
#
# Then copy OUTDIR/*/*.json into bench/results/ and run `python -m bench.report`.
#
# Needs jax, flax, optax, torch (for the comparison) and ml_collections, which
# configs/default.py imports: when it is not importable it is installed from the
# wheel in .whl/ (the repository's ignored wheel folder; $RESNET_LN_WHEELS
# overrides it) into /tmp/site ($RESNET_LN_GPU_SH_SITE overrides it).
#
# Environment: PYTHON (default python3); RESNET_LN_GPU_SH_TINY=1 shrinks every
# size and step count (the test suite runs it so on a CPU); RESNET_LN_GPU_SH_ONLY
# (comma-separated step names) runs only those; RESNET_LN_GPU_SH_BUDGET_S
# (default 460) is the budget in seconds.
set -u -o pipefail
# One compound command: bash reads the whole script before it runs, so a checkout
# that changes this file during a run does not change the run.
{

# The version in the development venv; tests/test_gpu_script.py keeps them equal.
ML_COLLECTIONS_VERSION=1.1.0

if [[ $# -ne 1 ]]; then
  echo "usage: bash bench/gpu.sh OUTDIR   (from the repository root)" >&2
  exit 2
fi
OUT=$1
PYTHON=${PYTHON:-python3}
WHEELS=${RESNET_LN_WHEELS:-.whl}
TINY=${RESNET_LN_GPU_SH_TINY:-0}
ONLY=${RESNET_LN_GPU_SH_ONLY:-}
BUDGET=${RESNET_LN_GPU_SH_BUDGET_S:-460}
SITE=${RESNET_LN_GPU_SH_SITE:-/tmp/site}
if [[ ! -f bench/gpu.sh ]]; then
  echo "bench/gpu.sh: run it from the repository root." >&2
  exit 2
fi
mkdir -p "$OUT"
LOG=$OUT/log.txt
: > "$LOG"
say() { echo "$@" | tee -a "$LOG"; }

# --- ml_collections -----------------------------------------------------------
if ! "$PYTHON" -c "import ml_collections" 2>/dev/null; then
  shopt -s nullglob
  wheels=("$WHEELS"/ml_collections-*.whl)
  shopt -u nullglob
  if [[ ${#wheels[@]} -eq 0 ]]; then
    cat >&2 <<EOF
ml_collections is not importable and there is no wheel in $WHEELS/.
Fetch it on a machine with the package index, from the repository root:
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml-collections==$ML_COLLECTIONS_VERSION
and bring the .whl/ folder along with the repository.
EOF
    exit 1
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "${wheels[0]}" || exit 1
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  say "installed ${wheels[0]} into $SITE"
fi

# --- sizes ------------------------------------------------------------------------
if [[ $TINY == 1 ]]; then
  # Checks that every step runs, not how fast: XLA compiles without its costly
  # optimisations (a third of the CPU time on a 2-core host).
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  R50=(--model cifar_resnet8 --image-size 8 --batch-size 4 --steps 1 --windows 1 --warmup 1
       --peak-size 64 --no-eval)
  LM=(--features 8 --num-layers 2 --batch-size 4 --seq-len 4 --embed-dim 4 --steps 1
      --windows 1 --warmup 1 --peak-size 64 --no-eval)
  CMP=(--rounds 1 --steps 1 --warmup 1)
  CMP_R50=(--workloads resnet50 --model cifar_resnet8 --batch-size 2 --image-size 8)
  CMP_LM=(--batch-size 2 --seq-len 4 --embed-dim 4 --features 8 --num-layers 2)
  TORCH_COMPILE=auto  # On a CPU: recorded as skipped (inductor would need minutes).
else
  R50=(--model resnet50 --image-size 224 --batch-size 256 --steps 20 --windows 3 --warmup 3)
  LM=(--features 1024 --num-layers 2 --batch-size 256 --seq-len 128 --steps 10 --windows 3
      --warmup 2)
  CMP=(--rounds 3 --steps 10 --warmup 3)
  CMP_R50=(--workloads resnet50 --batch-size 128)
  # float32 like the char_lm rows: cuDNN's LSTM in JAX has no other dtype.
  CMP_LM=(--batch-size 256 --features 1024 --num-layers 2 --dtype float32)
  TORCH_COMPILE=on
fi

# --- steps --------------------------------------------------------------------------
START=$SECONDS
NAMES=() STATUS=() TIMES=() PROMISED=()

# step NAME CAP_S PROMISED_JSON [VAR=VALUE ...] -- COMMAND...
step() {
  local name=$1 cap=$2 promised=$3
  shift 3
  local env=()
  while [[ $1 != -- ]]; do env+=("$1"); shift; done
  shift
  if [[ -n $ONLY && ",$ONLY," != *",$name,"* ]]; then
    return
  fi
  # Tiny sizes on a shared CPU: the budget is the only limit.
  [[ $TINY == 1 ]] && cap=$BUDGET
  local dir=$OUT/$name left=$((BUDGET - (SECONDS - START)))
  local limit=$((cap < left ? cap : left))
  NAMES+=("$name") PROMISED+=("$promised")
  mkdir -p "$dir"
  if ((limit < 20)); then
    say "== $name: skipped, ${left}s of the budget left"
    STATUS+=("skipped (budget)") TIMES+=(0)
    return
  fi
  say "== $name (timeout ${limit}s): ${env[*]} $*"
  local t0=$SECONDS rc=0
  env "${env[@]}" timeout -k 10 "$limit" "$@" --output "$dir" 2>&1 | tee "$dir/log.txt" >> "$LOG" \
    || rc=$?
  local status=ok
  if ((rc == 124 || rc == 137)); then status="timeout (${limit}s)"
  elif ((rc != 0)); then status="failed (rc $rc)"; fi
  say "   $name: $status in $((SECONDS - t0))s"
  STATUS+=("$status") TIMES+=($((SECONDS - t0)))
}

THROUGHPUT=("$PYTHON" -m bench.throughput)
COMPARE=("$PYTHON" -m bench.compare)
step resnet50_pmap 100 1 -- "${THROUGHPUT[@]}" "${R50[@]}" --dtype bfloat16 --parallelism pmap
step resnet50_shard_map 90 1 -- "${THROUGHPUT[@]}" "${R50[@]}" --dtype bfloat16 \
  --parallelism shard_map
step xla_no_command_buffer 60 1 "XLA_FLAGS=${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" -- \
  "${THROUGHPUT[@]}" "${R50[@]}" --dtype bfloat16 --parallelism pmap --no-eval
step xla_conv_nhwc 60 1 "XLA_FLAGS=${XLA_FLAGS:-} --xla_gpu_force_conv_nhwc=true" -- \
  "${THROUGHPUT[@]}" "${R50[@]}" --dtype bfloat16 --parallelism pmap --no-eval
step char_lm 110 2 -- "${THROUGHPUT[@]}" --model char_lm --layer-norm both "${LM[@]}" \
  --dtype float32
step compare_resnet50 90 1 -- "${COMPARE[@]}" "${CMP_R50[@]}" "${CMP[@]}" --torch-compile off
step compare_char_lm 120 2 -- "${COMPARE[@]}" --workloads char_lm_lstm,char_lm_lnlstm \
  "${CMP_LM[@]}" "${CMP[@]}" --torch-compile off
# Last: torch.compile's first compilation is the slowest step (resnet_ln runs beside it
# for the ratio).
step compare_torch_compile 150 1 -- "${COMPARE[@]}" "${CMP_R50[@]}" "${CMP[@]}" \
  --only torch_compile --torch-compile "$TORCH_COMPILE"

# --- summary ------------------------------------------------------------------------
STEPS_FILE=$OUT/steps.tsv
: > "$STEPS_FILE"
for i in "${!NAMES[@]}"; do
  printf '%s\t%s\t%s\t%s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${TIMES[$i]}" "${PROMISED[$i]}" \
    >> "$STEPS_FILE"
done
{
  echo
  echo "== summary: $((SECONDS - START))s of ${BUDGET}s; results in $OUT"
  "$PYTHON" - "$OUT" "$STEPS_FILE" <<'PY'
import glob, json, os, sys

out, steps_file = sys.argv[1:]


def headline(r):
  if r.get("benchmark") == "throughput":
    t, ev = r["train"], r.get("eval") or {}
    cells = [f"{r['model']} {r['dtype']} {r['parallelism']}",
             f"train {t['examples_per_s']['median']:,.1f} ex/s"]
    if t.get("tokens_per_s"):
      cells.append(f"{t['tokens_per_s']['median']:,.0f} tok/s")
    if t.get("mfu"):
      cells.append(f"MFU {100 * t['mfu']:.1f}%")
    if ev:
      cells.append(f"eval {ev['examples_per_s']['median']:,.1f} ex/s")
    ref = r.get("cudnn_lstm") or {}
    if "train" in ref:
      ratio = ref["train"]["tokens_per_s"]["median"] / t["tokens_per_s"]["median"]
      cells.append(f"our time/token {ratio:.2f}x cuDNN's")
    elif ref:
      cells.append("cuDNN ref: skipped" if "skipped" in ref
                   else "cuDNN ref error: " + str(ref.get("error"))[:100])
    return ", ".join(cells)
  if r.get("benchmark") == "compare":
    cells = [r["workload"], f"ours/theirs train: {r.get('ours_over_theirs_train') or '-'}",
             f"eval: {r.get('ours_over_theirs_eval') or '-'}"]
    if r.get("failed"):
      cells.append("failed: " + r["failed"][:80])
    return ", ".join(cells)
  return "(not a benchmark result)"


print(f"{'step':<22} {'status':<18} {'s':>4}  {'json':<5}  figures")
with open(steps_file) as f:
  for line in f:
    name, status, secs, promised = line.rstrip("\n").split("\t")
    files = sorted(glob.glob(os.path.join(out, name, "*.json")))
    heads = []
    for path in files:
      try:
        with open(path) as fh:
          heads.append(headline(json.load(fh)))
      except (OSError, ValueError, KeyError, TypeError) as error:
        heads.append(f"{os.path.basename(path)}: unreadable ({error})")
    heads = heads or ["-"]
    print(f"{name:<22} {status:<18} {secs:>4}  {len(files)}/{promised:<3}  {heads[0]}")
    for head in heads[1:]:
      print(f"{'':<22} {'':<18} {'':>4}  {'':<5}  {head}")
PY
} 2>&1 | tee -a "$LOG"

for status in "${STATUS[@]}"; do
  [[ $status == ok ]] || exit 1
done
exit 0
}
