#!/usr/bin/env bash
# Runs shards FIRST..LAST of an N-way split of one `icerun eval` grid at once (2 threads each),
# one JSON per shard in OUTDIR (merge them with eval_report.py). Each shard gets at most
# LIMIT seconds (default 570) so one slow shard cannot take the others' results with it.
# Usage: tools/icerun/eval_shards.sh OUTDIR FIRST LAST N [icerun eval options...]
#   ICERUN=path/to/icerun (default build/tools/icerun/icerun), LIMIT=seconds
# Example (the device host's 16 cores, docs/BENCHMARKS.md run E):
#   tools/icerun/eval_shards.sh out 0 7 16 --lengths 1024,2048,4096,8192 --mk-depths 4
set -uo pipefail
[ $# -ge 4 ] || { sed -n 2,8p "$0"; exit 2; }
out=$1 first=$2 last=$3 n=$4
shift 4
icerun=${ICERUN:-build/tools/icerun/icerun}
mkdir -p "$out"
pids=()
for ((k = first; k <= last; k++)); do
	timeout "${LIMIT:-570}" "$icerun" eval -t 2 --shard "$k/$n" --json "$@" \
		>"$out/shard$k.json" 2>"$out/shard$k.log" &
	pids+=($!)
done
rc=0
for ((i = 0; i < ${#pids[@]}; i++)); do
	wait "${pids[$i]}"
	r=$?
	echo "shard $((first + i))/$n: rc=$r"
	[ $r -eq 0 ] || rc=1
done
exit $rc
