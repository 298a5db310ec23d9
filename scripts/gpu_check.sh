#!/usr/bin/env bash
# The one-GPU acceptance check: on a machine with one CUDA GPU, in one go (budget: 8 minutes on
# an H200-class GPU), it runs
#   1. the `gpu`-marked tests (CUDA kernel vs PyTorch path, TF32 off, compile on CUDA, ...),
#   2. the kernel benchmark: fused kernel vs PyTorch K-loop vs materialising (time, peak memory),
#   3. the model benchmark, ours vs official romav2 2.0.1, `base` 640x640 batch 8 (the official
#      with its fused kernel when `import local_corr` works, and with its PyTorch fallback),
#   4. the same at `turbo` 320x320 batch 8,
#   5. the sequential-stream benchmark (`base`),
#   6. the node overhead (the installed romav2_node on loopback, in a private network namespace),
#   7. the node rate (bench_rate.py, the real model with seeded random weights on CUDA, same
#      namespace): the four cases at 30 Hz input, and the peak input rate of depth + points2,
#   8. optionally (--with-compile) torch.compile: cold and restart compile time, compiled vs eager,
# and writes every JSON under docs/bench-results/<date>-<gpu>/ plus a one-screen summary
# (summary.txt). Exit status 0 only if every step succeeded.
#
#   scripts/gpu_check.sh                 # on the GPU machine
#   scripts/gpu_check.sh --with-compile  # + the compile benchmark (adds a few minutes)
#   scripts/gpu_check.sh --smoke         # CI, CPU only: the same steps at toy sizes, into a
#                                        # temporary folder (or --out DIR)
#
# Needs the project's environment (.venv from scripts/setup_env.sh, or ROMAV2_PYTHON) with a CUDA
# build of torch, nvcc + ninja for the kernel's JIT build, and the official package for the
# comparisons (pip install --no-deps romav2==2.0.1; optionally fused-local-corr, the official's
# kernel, which pins its own torch). --smoke refuses to run on a GPU (its toy sizes measure
# nothing there), the full check refuses to run without one.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ROMAV2_PYTHON:-$ROOT/.venv/bin/python}"
SMOKE=0
WITH_COMPILE=0
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --with-compile) WITH_COMPILE=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
cd "$ROOT"
[[ -x "$PY" ]] || bash "$ROOT/scripts/setup_env.sh"

GPU="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')"
if [[ $SMOKE == 1 && -n "$GPU" ]]; then
  echo "gpu_check.sh: --smoke runs toy sizes for CI on a CPU; on this GPU ($GPU) run the full" \
       "check: scripts/gpu_check.sh" >&2
  exit 2
fi
if [[ $SMOKE == 0 && -z "$GPU" ]]; then
  echo "gpu_check.sh: no CUDA GPU here (torch.cuda.is_available() is False); the CPU-only CI" \
       "variant is scripts/gpu_check.sh --smoke" >&2
  exit 2
fi
if [[ -z "$OUT" ]]; then
  if [[ $SMOKE == 1 ]]; then
    OUT="$(mktemp -d -t romav2_gpu_check.XXXXXX)"
  else
    slug="$(echo "$GPU" | tr '[:upper:]' '[:lower:]' | sed -e 's/nvidia//g' -e 's/[^a-z0-9]\+/-/g' \
            -e 's/^-//' -e 's/-$//')"
    OUT="$ROOT/docs/bench-results/$(date -u +%F)-${slug:-gpu}"
  fi
fi
mkdir -p "$OUT/logs"
: > "$OUT/steps.tsv"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-44}"
[[ "$ROS_DOMAIN_ID" == 0 ]] && { echo "ROS_DOMAIN_ID must not be the default 0" >&2; exit 2; }
echo "gpu_check: ${GPU:-CPU smoke} -> $OUT"

FAILED=0
# step NAME TIMEOUT_S JSON_FILE|- COMMAND...: runs COMMAND, its stdout into JSON_FILE, its
# stderr into logs/NAME.log, and records exit status and seconds in steps.tsv.
step() {
  local name="$1" limit="$2" json="$3"
  shift 3
  local t0 rc
  t0=$(date +%s%N)
  if [[ "$json" == - ]]; then
    timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  else
    timeout "$limit" "$@" > "$OUT/$json" 2> "$OUT/logs/$name.log"
  fi
  rc=$?
  awk -v n="$name" -v rc="$rc" -v ns="$(( $(date +%s%N) - t0 ))" \
    'BEGIN { printf "%s\t%s\t%.1f\n", n, rc, ns / 1e9 }' >> "$OUT/steps.tsv"
  if [[ $rc != 0 ]]; then
    FAILED=1
    echo "gpu_check: step $name failed ($rc), log: $OUT/logs/$name.log" >&2
  fi
  tail -n 1 "$OUT/logs/$name.log"
}

# The node runs in a private network namespace holding only `lo` (DDS never leaves the machine).
NETNS=()
if unshare --net true 2>/dev/null; then
  NETNS=(unshare --net bash -c 'ip link set lo up && exec "$@"' bash)
else
  echo "gpu_check: cannot create a network namespace; DDS stays on loopback through" \
       "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST only" >&2
fi

if [[ $SMOKE == 1 ]]; then
  LC=(--small --repeats 1 --batches 1)
  BASE=(--smoke)
  TURBO=(--smoke --batch 2)
  STREAM=(--smoke)
  NODE=(--smoke)
  RATE=(--smoke --model random --case depth_points2)
  RATE_PEAK=(--smoke --model random --case depth_points2 --peak)
  COMPILE=(--smoke --bidirectional uni)
  LIMIT=600
else
  LC=(--full)
  BASE=(--setting base --batch 8 --repeats 5 --warmup 2 --official-kernel both)
  TURBO=(--setting turbo --batch 8 --repeats 5 --warmup 2 --official-kernel both)
  STREAM=(--setting base --frames 50 --warmup-pairs 3)
  NODE=(--setting turbo --image-size 640 480 --pairs 20 --device cuda)
  RATE=(--model random --device cuda --rate 30 --warmup 3 --duration 5)
  RATE_PEAK=(--model random --device cuda --case depth_points2 --peak
             --peak-rates 10 15 20 25 30 40 --warmup 2 --duration 4)
  COMPILE=(--setting base --batch 8 --bidirectional uni --mode max-autotune)
  LIMIT=300
fi

step gpu_tests "$LIMIT" - bash scripts/run_tests.sh -q -m gpu test/core test/bench \
  -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml"
step local_corr 120 local_corr.json "$PY" bench/bench_local_corr.py "${LC[@]}"
step model_base "$LIMIT" model_base_b8.json "$PY" bench/bench_model.py "${BASE[@]}"
step model_turbo "$LIMIT" model_turbo_b8.json "$PY" bench/bench_model.py "${TURBO[@]}"
step stream "$LIMIT" stream_base.json "$PY" bench/bench_stream.py "${STREAM[@]}"
step node "$LIMIT" node_turbo.json "${NETNS[@]}" "$PY" bench/bench_node.py "${NODE[@]}"
step rate "$LIMIT" rate_30hz.json "${NETNS[@]}" "$PY" bench/bench_rate.py "${RATE[@]}"
step rate_peak "$LIMIT" rate_peak.json "${NETNS[@]}" "$PY" bench/bench_rate.py "${RATE_PEAK[@]}"
if [[ $WITH_COMPILE == 1 ]]; then
  step compile 900 compile_base.json "$PY" bench/bench_compile.py "${COMPILE[@]}"
fi
"$PY" bench/gpu_check_summary.py "$OUT"
exit $FAILED
