#!/usr/bin/env bash
# gpu_check.sh - the one prepared real-GPU check of netdsl's CUDA backend (issue 13).
#
#     bash benchmarks/gpu_check.sh [--dry-run] [OUTDIR]
#
# Run from the project root on a machine with an NVIDIA GPU, numba, numba-cuda, PyTorch (and
# pytest), but possibly no lark and no network. Within GPU_CHECK_BUDGET seconds (default 450,
# so the whole run stays under 8 minutes), each step under its own `timeout`, in this order:
#
#   1. setup     versions, nvidia-smi; lark (and pytest, if missing) installed offline from
#                the wheels in $WHEELS, else .gpu/wheels (git-ignored: copy the wheels of
#                ../shared/gpu/wheels there), into a scratch folder on PYTHONPATH; netdsl
#                itself from this checkout through PYTHONPATH (nothing installed)
#   2. tests     NETDSL_REAL_GPU=1 pytest tests/test_cuda.py tests/test_cuda_devices.py
#                tests/test_cuda_stream.py, sharded over parallel processes (every kernel is
#                JIT-compiled on first use; serially that alone takes minutes)
#   3. train     netdsl train nets/lenet5.net --device cuda (MNIST, shipped; the file's 8
#                epochs): passes at >= 99 % test accuracy; runs beside the tests
#   4. lenet5    benchmarks/gpu_vs_torch.py --nets lenet5 (batch 128; netdsl with and without
#                the CUDA graph; PyTorch TF32 off and on; per-layer TFLOP/s)
#   5. alexnet   benchmarks/gpu_vs_torch.py --nets alexnet --no-eager (batch 128; `gpus 2` as
#                declared and as one column; PyTorch TF32 off and on; per-layer TFLOP/s);
#                gets the time that is left
#
# Environment: PYTHON (default python3), WHEELS (a folder of wheels), GPU_CHECK_BUDGET
# (seconds), GPU_SHARDS (test processes; default half the cores less one, at most 8).
#
# Output: OUTDIR (default $OUT, the device tool's output folder, else ./gpu_check_out) gets
# at most 8 files: gpu_check.log (everything), summary.txt (one line per step, printed last),
# one log per step, tests-full.log (every shard's pytest output). Exit status 0 only if every
# step ran and passed. --dry-run runs the same steps in Numba's CUDA simulator on tiny sizes
# (no GPU needed, about 2-3 minutes): two tests of the upload stream, LeNet-5 on a tiny
# random .npz with --batch 2, the benchmark's --dry-run once for both plans.
set -u

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ "${1:-}" == -* ]]; then echo "usage: bash benchmarks/gpu_check.sh [--dry-run] [OUTDIR]" >&2; exit 2; fi
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-450}
DEADLINE=$((START + BUDGET))
ROOT=$(pwd)
if [[ ! -f "$ROOT/netdsl/__init__.py" || ! -f "$ROOT/benchmarks/gpu_vs_torch.py" ]]; then
  echo "gpu_check.sh: run it from the netdsl project root" >&2; exit 2
fi
OUTDIR=${1:-${OUT:-$ROOT/gpu_check_out}}
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR=$WORK/numba_cache NETDSL_CACHE_DIR=$WORK/kernel_cache  # shared by shards
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if (( DRY )); then export NUMBA_ENABLE_CUDASIM=1; else unset NUMBA_ENABLE_CUDASIM; fi

exec > >(tee -a "$OUTDIR/gpu_check.log") 2>&1
: > "$OUTDIR/summary.txt"

now() { date +%s; }
say() { echo "[gpu_check +$(( $(now) - START ))s] $*"; }
record() { echo "$*" >> "$OUTDIR/summary.txt"; }
# budget CAP RESERVE: seconds a step may use: at most CAP, leaving RESERVE for the later steps
budget() {
  local left=$(( DEADLINE - $(now) - $2 ))
  (( left > $1 )) && left=$1
  echo "$left"
}
# run_step NAME SECONDS CMD...: CMD under `timeout` (its process group killed at the limit),
# its output to $OUTDIR/NAME.log and to this log; the outcome to the summary
run_step() {
  local name=$1 secs=$2; shift 2
  if (( secs < ${MIN_SECS:-10} )); then
    say "SKIP $name: no time left"; record "$name: SKIPPED (no time left)"; return 99
  fi
  say "START $name (timeout ${secs}s): $*"
  local t0 rc; t0=$(now)
  timeout --kill-after=5 "$secs" "$@" > >(tee "$OUTDIR/$name.log") 2>&1
  rc=$?
  local dt=$(( $(now) - t0 )) how="rc=$rc"
  [[ $rc == 124 || $rc == 137 ]] && how="TIMEOUT after ${secs}s"
  say "END $name: $how in ${dt}s"
  record "$name: $how (${dt}s)${NOTE:+ $NOTE}"
  return $rc
}

say "netdsl GPU check$( (( DRY )) && echo ' (DRY RUN: the CUDA simulator, tiny sizes)'); root $ROOT, output $OUTDIR, budget ${BUDGET}s"

# ------------------------------------------------------------------------------ 1. setup
{
  echo "== date"; date -u
  echo "== host"; uname -a; nproc
  echo "== git"; git -C "$ROOT" log --oneline -1 2>/dev/null; git -C "$ROOT" status --short 2>/dev/null | head -20
  echo "== nvidia-smi"; timeout 20 nvidia-smi 2>&1 | head -20
  timeout 20 nvidia-smi --query-gpu=name,driver_version,compute_mode,clocks.sm,clocks.max.sm,memory.total --format=csv 2>&1
} > "$OUTDIR/setup.log" 2>&1
find_wheels() {
  local d
  for d in "${WHEELS:-}" "$ROOT/.gpu/wheels" "$ROOT/../shared/gpu/wheels"; do
    [[ -n "$d" ]] && ls "$d"/lark-*.whl > /dev/null 2>&1 && { (cd "$d" && pwd); return; }
  done
}
WHEEL_DIR=$(find_wheels)
# install PKG...: from the wheel folder, offline, into a scratch folder put on PYTHONPATH
install() {
  [[ -n "$WHEEL_DIR" ]] || { say "no wheel folder (WHEELS, .gpu/wheels) for: $*"; return 1; }
  timeout 120 "$PY" -m pip install -q --no-index --find-links "$WHEEL_DIR" --no-compile \
    --disable-pip-version-check --target "$WORK/site" "$@" >> "$OUTDIR/setup.log" 2>&1
}
SETUP=ok
if (( DRY )) && [[ -n "$WHEEL_DIR" ]]; then  # the offline install, checked in a scratch folder
  if install lark && PYTHONPATH="$WORK/site" "$PY" -c "import lark, sys; sys.exit(not lark.__file__.startswith('$WORK/site'))"; then
    say "dry run: lark installs offline from $WHEEL_DIR"
  else
    SETUP="lark did not install from $WHEEL_DIR"
  fi
  rm -rf "$WORK/site"
fi
if ! "$PY" -c "import lark" 2> /dev/null; then
  install lark && export PYTHONPATH="$PYTHONPATH:$WORK/site" || SETUP="lark missing and not installable (wheels: ${WHEEL_DIR:-none})"
fi
if ! "$PY" -c "import pytest" 2> /dev/null; then
  install pytest && export PYTHONPATH="$PYTHONPATH:$WORK/site" || say "pytest missing: the tests will fail"
fi
"$PY" - >> "$OUTDIR/setup.log" 2>&1 <<'EOF'
import importlib, sys
print("== python", sys.version.split()[0], sys.executable)
for m in ("numpy", "scipy", "numba", "numba_cuda", "cuda.core", "cuda.bindings", "lark", "pytest",
          "hypothesis", "torch", "netdsl"):
    try:
        mod = importlib.import_module(m)
        print(f"{m:14s} {getattr(mod, '__version__', '?'):12s} {getattr(mod, '__file__', '')}")
    except Exception as e:
        print(f"{m:14s} MISSING ({type(e).__name__}: {e})")
from numba import config, cuda
print("NUMBA_ENABLE_CUDASIM", config.ENABLE_CUDASIM, "cuda.is_available()", cuda.is_available())
try:
    import torch
    print("torch.cuda", torch.cuda.is_available(), torch.version.cuda)
except Exception as e:
    print("torch:", type(e).__name__, e)
EOF
cat "$OUTDIR/setup.log"
"$PY" -c "import netdsl, lark, numba" 2> /dev/null || SETUP="netdsl does not import: see setup.log"
if ! (( DRY )) && ! "$PY" -c "from numba import cuda; import sys; sys.exit(not cuda.is_available())" 2> /dev/null; then
  SETUP="no CUDA GPU visible to numba (--dry-run runs the steps in the simulator)"
fi
record "setup: $SETUP (wheels: ${WHEEL_DIR:-none})"
if [[ "$SETUP" != ok ]]; then say "setup failed: $SETUP"; cat "$OUTDIR/summary.txt"; exit 1; fi
if ! (( DRY )); then  # the upload stream must not synchronise with the kernels' stream
  record "  upload stream: $(timeout 60 "$PY" -c "
try:
    from numba.cuda.cudadrv import driver as drv
    from netdsl.backends.cuda_runner import upload_stream
    flags = int(drv.driver.cuStreamGetFlags(upload_stream().handle))
    print('non-blocking' if flags & 1 else 'BLOCKING (no overlap with the kernels)', f'(flags {flags})')
except Exception as e:
    print('not checked:', type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else '')
" 2>&1 | tail -1)"
fi

# ------------------------------------------------------------------- 3. train (in the background)
if (( DRY )); then  # MNIST's shape, a few random images: the run's code paths, not its accuracy
  "$PY" -c "
import numpy as np
r = np.random.default_rng(0)
for name, n in (('train', 4), ('test', 2)):
    np.savez('$WORK/tiny_' + name + '.npz', x=r.integers(0, 256, (n, 28, 28), np.uint8),
             y=r.integers(0, 10, n))"
  TRAIN=(--data "$WORK/tiny_train.npz,$WORK/tiny_test.npz" --batch 2 --epochs 1)
else
  TRAIN=()
fi
# beside the tests, which compile kernels on the CPUs most of the time: the GPU has room
run_step train "$(budget 150 200)" "$PY" -m netdsl train nets/lenet5.net --device cuda --quiet \
  --out "$WORK/lenet5_run" "${TRAIN[@]}" &
TRAIN_PID=$!

# ------------------------------------------------------------------------------ 2. tests
cat > "$WORK/gpu_shard.py" <<'EOF'
"""pytest plugin: run shard GPU_SHARD of GPU_SHARDS (round robin over the collected tests, the
real-GPU-only ones first, in shard 0), and log each test's outcome to GPU_SHARD_LOG as it
ends (what a shard stopped by its time limit had done)."""
import os

K, I = int(os.environ.get("GPU_SHARDS", "1")), int(os.environ.get("GPU_SHARD", "0"))
LOG = os.environ.get("GPU_SHARD_LOG")


def pytest_runtest_logreport(report):
    if LOG and (report.when == "call" or report.outcome != "passed"):
        with open(LOG, "a") as f:
            f.write(f"{report.outcome.upper():7s} {report.when:8s} {report.duration:7.2f}s "
                    f"{report.nodeid}\n")


def pytest_collection_modifyitems(config, items):
    first = [it for it in items if "real_gpu" in it.name]
    rest = [it for it in items if "real_gpu" not in it.name]
    mine = (first if I == 0 else []) + [it for j, it in enumerate(rest) if j % K == I]
    keep = {id(it) for it in mine}
    gone = [it for it in items if id(it) not in keep]
    if gone:
        config.hook.pytest_deselected(items=gone)
    items[:] = mine
EOF
if (( DRY )); then  # two of the upload stream's tests, in two shards
  TESTS=(tests/test_cuda_stream.py::test_upload_stream_trains_bitwise_like_the_default_stream
         tests/test_cuda_stream.py::test_the_next_batch_goes_up_while_the_step_runs); SHARDS=2
else  # two cores per shard, two left for the training
  TESTS=(tests/test_cuda.py tests/test_cuda_devices.py tests/test_cuda_stream.py)
  SHARDS=${GPU_SHARDS:-$(( $(nproc) / 2 - 1 ))}; (( SHARDS > 8 )) && SHARDS=8; (( SHARDS < 1 )) && SHARDS=1
fi
shards() {  # every shard in the background, each one's output to a scratch log; then all of them
  local i pids=() rc=0 r
  for ((i = 0; i < SHARDS; i++)); do
    ( [[ $DRY == 1 ]] || export NETDSL_REAL_GPU=1
      GPU_SHARDS=$SHARDS GPU_SHARD=$i GPU_SHARD_LOG="$WORK/progress$i.txt" NUMBA_NUM_THREADS=2 \
        PYTHONPATH="$WORK:$PYTHONPATH" \
        "$PY" -m pytest "${TESTS[@]}" -q -p gpu_shard -p no:cacheprovider -rfEs \
        > "$WORK/shard$i.log" 2>&1 ) &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"; r=$?
    echo "---- shard $i of $SHARDS: rc=$r: $(grep -E '(passed|failed|error|no tests ran)' "$WORK/shard$i.log" | tail -1)"
    (( r == 0 || r == 5 )) || rc=1  # 5: no tests in this shard
    (( r == 0 || r == 5 )) || tail -80 "$WORK/shard$i.log"
  done
  return $rc
}
export -f shards
export DRY SHARDS WORK PY
NOTE="($SHARDS shards)" run_step tests "$(budget 170 250)" bash -c "TESTS=(${TESTS[*]}); shards"
cat "$WORK"/progress*.txt "$WORK"/shard*.log > "$OUTDIR/tests-full.log" 2> /dev/null
record "  test outcomes (all shards, as logged when each test ended):" \
  "$(cat "$WORK"/progress*.txt 2> /dev/null | awk '{print tolower($1)}' | sort | uniq -c | tr -s ' \n' ' ')"
grep -hvE "^PASSED|^SKIPPED" "$WORK"/progress*.txt 2> /dev/null | sed 's/^/  /' >> "$OUTDIR/summary.txt"

wait "$TRAIN_PID"
ACC=$("$PY" -c "import json; print(f\"{100 * (1 - json.load(open('$WORK/lenet5_run/result.json'))['test_err']):.2f}\")" 2> /dev/null)
if [[ -z "$ACC" ]]; then
  record "  LeNet-5 MNIST on cuda: no result"
elif (( DRY )); then
  record "  LeNet-5 on cuda (dry run, random data): test accuracy ${ACC}% (not checked)"
elif "$PY" -c "import sys; sys.exit(not float('$ACC') >= 99.0)"; then
  record "  LeNet-5 MNIST on cuda: test accuracy ${ACC}% >= 99%: PASS"
else
  record "  LeNet-5 MNIST on cuda: test accuracy ${ACC}% < 99%: FAIL"
fi

# ------------------------------------------------------------------------------ 4./5. benchmarks
if (( DRY )); then
  run_step lenet5 "$(budget 120 0)" "$PY" benchmarks/gpu_vs_torch.py --dry-run --no-eager
  record "alexnet: not run in a dry run (the tiny net above ran both ways: gpus 2 as declared, one column)"
else
  run_step lenet5 "$(budget 70 150)" "$PY" benchmarks/gpu_vs_torch.py --nets lenet5 --steps 30
  MIN_SECS=60 run_step alexnet "$(budget 300 0)" "$PY" benchmarks/gpu_vs_torch.py --nets alexnet \
    --steps 10 --no-eager
fi
for name in lenet5 alexnet; do  # the headline lines into the summary
  [[ -f "$OUTDIR/$name.log" ]] && grep -E "ms/step|worker" "$OUTDIR/$name.log" | sed 's/^/  /' >> "$OUTDIR/summary.txt"
done

timeout 20 nvidia-smi --query-gpu=memory.used,temperature.gpu,clocks.sm --format=csv >> "$OUTDIR/setup.log" 2>&1
say "DONE in $(( $(now) - START ))s"
echo "================================================================ summary"
cat "$OUTDIR/summary.txt"
# exit 0 only if every step ran and passed
! grep -qE "rc=[1-9]|TIMEOUT|FAIL|SKIPPED|no result|^(FAILED|ERROR)" "$OUTDIR/summary.txt"
