#!/usr/bin/env bash
# The main job: a 4k-token passkey prompt (Jane Austen filler, key at 50% depth) through
# SmolLM2-135M on the CPU. It starts icecached on its defaults (a private socket), prefills the
# prompt once, then answers under full attention and at a 128-token budget per layer and KV head:
# through the daemon (libicecache: sink + selected pages + window), with the DCI-tree in-process,
# Quest-style positional pages and StreamingLLM. Prints each answer, the expected key, pages
# selected, the DRAM tier's occupancy and tokens/s. Without the model: the index benchmark.
set -euo pipefail
build=${1:-build}
model=${ICE_MODEL:-$build/models/SmolLM2-135M-Instruct.Q4_1.gguf}
icerun=$build/tools/icerun/icerun
if [ ! -x "$icerun" ] || [ ! -s "$model" ]; then
	echo "demo: model not fetched ($model); running the index benchmark instead" >&2
	exec "$build/tools/bench/icebench" index --quick
fi
austen=${ICE_AUSTEN:-$build/models/austen.txt}
fillers=austen
[ -s "$austen" ] || fillers=repeat
args=(eval -m "$model" --austen "$austen" --lengths 4096 --depths 1 --tasks passkey
	--fillers "$fillers" --budgets 128 -v)
if ! "$icerun" eval --help | grep -q icecache || [ ! -x "$build/runtime/icecached" ]; then
	exec "$icerun" "${args[@]}" --methods full,dci,quest,stream
fi
dir=$(mktemp -d)
sock=$dir/icecached.sock
# daemon defaults (8 KiB page slots, 512 MiB DRAM tier): a 4k-token SmolLM2 prompt is
# 30 layers x 3 KV heads x 256 pages, about 180 MiB of slots
"$build/runtime/icecached" --socket "$sock" >"$dir/icecached.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
	[ -S "$sock" ] && break
	kill -0 "$pid" 2>/dev/null || { cat "$dir/icecached.log" >&2; exit 1; }
	sleep 0.1
done
echo "demo: icecached (pid $pid) on $sock"
"$icerun" "${args[@]}" --socket "$sock" --methods full,icecache,dci,quest,stream
"$build/tools/icectl/icectl" --socket "$sock" status || true
