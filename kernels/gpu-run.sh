#!/usr/bin/env bash
# Runs the GPU checks and the GPU benchmark on a machine with a CUDA device, writing logs to
# $OUT (default ./gpu-out). Binaries come from BIN (default build/): the meson build's
# tests/kernels/test_kern_gpu, tests/kernels/test_hbm_gpu and tools/bench/icebench, or a flat
# folder holding them (with any shared libraries they need in BIN/lib). Steps:
#   1. the gpu test programs (they run their tests unforked themselves)
#   2. the same under compute-sanitizer memcheck, then racecheck and synccheck on the kernels
#   3. icebench gpu --sdpa PYTHON --json (PyTorch SDPA baseline in the same run)
# Usage: kernels/gpu-run.sh [quick]   (quick: tests only, no sanitizer or benchmark)
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
OUT=${OUT:-$here/gpu-out}
BIN=${BIN:-build}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export ICE_SOURCE_ROOT=$here
[ -d "$BIN/lib" ] && export LD_LIBRARY_PATH="$here/$BIN/lib:${LD_LIBRARY_PATH:-}"
find_bin() { for p in "$BIN/$1" "$BIN/tests/kernels/$1" "$BIN/tools/bench/$1"; do [ -x "$p" ] && { echo "$p"; return; }; done; }
status=0
step() { local name=$1; shift; echo "== $name: $*"; "$@" >"$OUT/$name.log" 2>&1; local r=$?; echo "   rc=$r"; tail -n "${TAILN:-6}" "$OUT/$name.log"; [ $r -eq 0 ] || status=1; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader; nvcc --version | tail -1; uname -r; } 2>&1 | tee "$OUT/env.log"
for t in test_kern_gpu test_hbm_gpu; do
	b=$(find_bin $t)
	[ -n "$b" ] || { echo "missing $t"; status=1; continue; }
	TAILN=14 step "$t" "$b"
done
[ "${1:-}" = quick ] && exit $status
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for t in test_kern_gpu test_hbm_gpu; do
	b=$(find_bin $t)
	[ -n "$b" ] || continue
	# The deliberate-fault case is left out: it makes an illegal access on purpose.
	ICE_GPU_SKIP=fault step "memcheck-$t" "$san" --tool memcheck --leak-check full --error-exitcode 9 "$b"
done
b=$(find_bin test_kern_gpu)
ICE_GPU_QUICK=1 step racecheck "$san" --tool racecheck --error-exitcode 9 "$b"
ICE_GPU_QUICK=1 step synccheck "$san" --tool synccheck --error-exitcode 9 "$b"
ICE_GPU_QUICK=1 ICE_GPU_SKIP=ipc step initcheck "$san" --tool initcheck --error-exitcode 9 "$b"
bench=$(find_bin icebench)
echo "== bench: $bench gpu --sdpa $PY --json ${BENCH_ARGS:-}"
# shellcheck disable=SC2086
"$bench" gpu --sdpa "$PY" --json ${BENCH_ARGS:-} >"$OUT/bench.json" 2>"$OUT/bench.txt" || status=1
cat "$OUT/bench.txt"
exit $status
