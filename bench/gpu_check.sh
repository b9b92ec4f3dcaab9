#!/usr/bin/env bash
# One prepared check of the CUDA engine on a GPU machine without network access.
#
#   OUT=/some/dir bash bench/gpu_check.sh        # run from the repository root
#   PWS_GPU_SKIP="test_cpu study_smoke" PWS_BENCH_ARGS="--sizes 1e9" OUT=... bash bench/gpu_check.sh
#
# Needs python3 with PyTorch (CUDA), CMake, ninja, pybind11, scikit-build-core, pytest, numpy,
# scipy and hypothesis installed, and nvcc (CUDA 13). Steps (each logged to <step>.log in
# $OUT/logs.tar.gz, each under a timeout; a failing step is recorded and the script goes on):
#   1. nvidia-smi                      -> nvidia-smi.txt
#   2. build + install for sm_90       -> build.log   (pip --no-build-isolation, timed); then
#      bench/launch_cost.cu (a launch's device cost by parameter size) -> launch_cost.{log,json}
#   3. pytest -m cuda tests/test_cuda.py, then a CPU sanity subset
#   4. bench/pass_timeline.py (the GPU activities of one pass; again with PWS_CUDA_SMALL_TABLE=0),
#      bench/bench_stats.py --device cuda
#      -> $OUT/bench_results/ (JSON + Markdown), then
#      bench/bench_chunks.py (the work-split sweep at 10^8, then its two fastest bfloat16 settings
#      and the default at 10^9; PWS_CHUNK_ARGS) beside it
#   5. pyweightstat-run on the smoke preset with --device cuda (MNIST from .carry/data)
#   6. $OUT/gpu_check.json: step statuses and times, GPU, driver, torch and CUDA versions
# Step times vary between machines of one kind: on two H200 starts of one session the build took
# 77 and 143 s, the CUDA tests 86 and 132 s, the benchmark 70 and 85 s, the timeline 9 s (since
# the twelfth session the benchmark also alternates 41 tracked ViT-B/16 blocks with the plan's
# tables as parameters and in device memory, about 40 s more, and the timeline runs twice). The
# work-split sweep takes what is left before PWS_GPU_DEADLINE_S (default 540 s from the start):
# give the device call that deadline plus about 40 s as its limit, and count a minute or more for
# the machine's start against the session's device time (PWS_GPU_SKIP="test_cpu study_smoke").
set -u
set -o pipefail

OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
REPO="$PWD"
PY="${PYTHON:-python3}"
T_START=$(date +%s)
# The device tool brings back at most 8 files: step logs go to $LOGS, packed into
# $OUT/logs.tar.gz after every step and every 20 s in between, so that a call cut short by its time
# limit still brings back what ran. $OUT keeps logs.tar.gz, gpu_check.json, summary.txt and the
# benchmarks' own JSON/Markdown (bench_results/, written as they go).
LOGS=/tmp/pws_gpu_logs
rm -rf "$LOGS" && mkdir -p "$LOGS"
STATUS_FILE="$LOGS/steps.tsv"
: > "$STATUS_FILE"
pack() {
  local tmp="/tmp/pws_logs.$BASHPID.tar.gz"  # the background packer's and the script's own apart
  tar -czf "$tmp" -C "$LOGS" . 2>/dev/null && mv -f "$tmp" "$OUT/logs.tar.gz"
}
(while sleep 20; do pack; done) &
PACKER=$!
# PWS_GPU_DEADLINE_S (default 540): seconds from the start by which the script should be done; the
# work-split sweep gets what is left of it (less 20 s for the summary), so give the device call
# this plus the machine's start (a minute or more).
DEADLINE=$((T_START + ${PWS_GPU_DEADLINE_S:-540}))

# Steps named in PWS_GPU_SKIP (space-separated, e.g. "test_cpu study_smoke") are skipped, and
# PWS_BENCH_ARGS is passed to bench_stats.py (e.g. "--sizes 1e9 --dtypes float32"): a short
# device budget can then go to the build, the CUDA tests and the part of the benchmark at hand.
PWS_GPU_SKIP="${PWS_GPU_SKIP:-}"
# run_step NAME TIMEOUT_S COMMAND...: log to $LOGS/NAME.log, record "name rc seconds", pack.
run_step() {
  local name="$1" limit="$2"
  shift 2
  if [[ " $PWS_GPU_SKIP " == *" $name "* ]]; then
    echo "=== [$name] skipped (PWS_GPU_SKIP)" | tee "$LOGS/$name.log"
    return 0
  fi
  echo "=== [$name] $*" | tee "$LOGS/$name.log"
  local t0 t1 rc
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOGS/$name.log"
  rc=${PIPESTATUS[0]}
  t1=$(date +%s%N)
  printf '%s\t%s\t%d.%d\n' "$name" "$rc" $(((t1 - t0) / 1000000000)) \
    $((((t1 - t0) / 100000000) % 10)) >> "$STATUS_FILE"
  echo "=== [$name] exit $rc" | tee -a "$LOGS/$name.log"
  pack
  return 0
}

step_ok() { awk -v n="$1" '$1 == n && $2 == 0 {ok = 1} END {exit !ok}' "$STATUS_FILE"; }

# 1. the GPU
run_step nvidia-smi 30 nvidia-smi
cp "$LOGS/nvidia-smi.log" "$LOGS/nvidia-smi.txt"

# 2. build from a clean copy of the sources (no in-tree build files, no host-built _C module)
SRC=/tmp/pws_gpu_check_src
rm -rf "$SRC" && mkdir -p "$SRC"
tar -C "$REPO" \
  --exclude=./build --exclude=./CMakeCache.txt --exclude=./CMakeFiles --exclude=./build.ninja \
  --exclude='./.ninja_*' --exclude=./cmake_install.cmake --exclude=./.cmake \
  --exclude=./.skbuild-info.json --exclude=./CMakeInit.txt --exclude='*.so' --exclude=./.git \
  --exclude=./bench/results -cf - . | tar -C "$SRC" -xf -
build() {
  cd "$SRC" &&
    CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" PYWEIGHTSTAT_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-16}" \
      "$PY" -m pip install --no-build-isolation --no-deps --no-index -v . &&
    cd /tmp && "$PY" -c "import pyweightstat as p; print(p.__file__); print(p.build_info())"
}
run_step build 300 bash -c "$(declare -f build); SRC='$SRC' PY='$PY' build"

# 2b. device cost of a launch by the size of its parameters (standalone, no pyweightstat)
if [ -f bench/launch_cost.cu ] && command -v nvcc > /dev/null; then
  run_step launch_cost 60 bash -c "nvcc -O2 -std=c++17 -arch=sm_90 bench/launch_cost.cu \
    -o /tmp/pws_launch_cost && /tmp/pws_launch_cost '$LOGS/launch_cost.json'"
fi

# 3. tests (the installed package; -P keeps the source tree's pyweightstat/ off sys.path)
if step_ok build; then
  run_step test_cuda 180 "$PY" -P -m pytest -m cuda -q -p no:cacheprovider tests \
    --durations=10 --junitxml="$LOGS/test_cuda.xml"
  cpu_tests=()
  for f in tests/test_moments.py tests/test_histogram.py; do [ -f "$f" ] && cpu_tests+=("$f"); done
  if [ ${#cpu_tests[@]} -gt 0 ]; then
    run_step test_cpu 120 "$PY" -P -m pytest -q -x -p no:cacheprovider -m "not slow" \
      "${cpu_tests[@]}"
  fi
  # 4. where a pass's device time goes: every GPU activity of one call (torch.profiler)
  if [ -f bench/pass_timeline.py ]; then
    # its files travel in logs.tar.gz (at most 8 files come back from a device call)
    run_step timeline 60 "$PY" bench/pass_timeline.py --out "$LOGS/timeline"
    # the same with the full 29 KB launch table in every launch (as before the twelfth session)
    run_step timeline_big 60 env PWS_CUDA_SMALL_TABLE=0 "$PY" bench/pass_timeline.py \
      --out "$LOGS/timeline_big"
  fi
  # 4a. benchmark (writes JSON + Markdown)
  if [ -f bench/bench_stats.py ]; then
    mkdir -p "$OUT/bench_results"
    # shellcheck disable=SC2086 # PWS_BENCH_ARGS is a list of arguments
    run_step bench 240 "$PY" bench/bench_stats.py --device cuda --out "$OUT/bench_results" \
      ${PWS_BENCH_ARGS:-}
  fi
  # 4b. work-split sweep of the moments pass (chunk length x merge group; JSON + Markdown)
  left=$((DEADLINE - $(date +%s) - 20))
  if [ -f bench/bench_chunks.py ] && [ "$left" -ge 30 ]; then
    # shellcheck disable=SC2086 # PWS_CHUNK_ARGS is a list of arguments
    run_step chunks $((left + 30)) "$PY" bench/bench_chunks.py --out "$OUT/bench_results" \
      --budget-s "$left" ${PWS_CHUNK_ARGS:-}
  elif [ -f bench/bench_chunks.py ]; then
    echo "=== [chunks] skipped: ${left} s left before PWS_GPU_DEADLINE_S" | tee "$LOGS/chunks.log"
  fi
  # 5. the study's main command on the GPU (smoke preset, MNIST carried in .carry/data)
  if [ -d .carry/data/mnist ]; then
    run_step study_smoke 120 "$PY" -P -m pyweightstat.cli --datasets mnist --families dnn,cnn,vit \
      --preset smoke --device cuda --out /tmp/pws_study_smoke --data-dir .carry/data
    cp /tmp/pws_study_smoke/report.md "$LOGS/study_smoke_report.md" 2>/dev/null || true
  fi
else
  echo "build failed: tests and benchmark skipped" | tee "$LOGS/skipped.txt"
fi

# 6. summary
"$PY" -P - "$OUT" "$STATUS_FILE" <<'PYEOF' | tee "$OUT/summary.txt"
import json, platform, subprocess, sys, datetime
out, status_file = sys.argv[1], sys.argv[2]
steps = []
for line in open(status_file):
    name, rc, secs = line.rstrip("\n").split("\t")
    steps.append({"step": name, "rc": int(rc), "ok": rc == "0", "seconds": float(secs)})
info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(), "steps": steps}
try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    info["nvidia_smi"] = q.stdout.strip()
except Exception as exc:  # noqa: BLE001
    info["nvidia_smi"] = f"unavailable: {exc}"
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
except Exception as exc:  # noqa: BLE001
    info["torch"] = f"unavailable: {exc}"
try:
    import pyweightstat
    info["build_info"] = pyweightstat.build_info()
except Exception as exc:  # noqa: BLE001
    info["build_info"] = f"unavailable: {exc}"
with open(f"{out}/gpu_check.json", "w") as f:
    json.dump(info, f, indent=2, default=str)
print(f"device: {info.get('device', '?')} | {info.get('nvidia_smi', '?')} | torch {info.get('torch')}")
print(f"{'step':<12} {'status':<8} {'seconds':>8}")
for s in steps:
    print(f"{s['step']:<12} {'ok' if s['ok'] else 'FAIL ' + str(s['rc']):<8} {s['seconds']:>8.1f}")
PYEOF

kill "$PACKER" 2>/dev/null
wait "$PACKER" 2>/dev/null
pack
ls -la "$OUT" "$OUT/bench_results" 2>/dev/null || true
