#!/usr/bin/env bash
# The main job. With the model fetched (tools/setup.sh does it): a 4k-token passkey prompt
# (Austen filler, key at 50% depth) through SmolLM2-135M, prefilled once, then answered under
# full attention and at a 128-token budget per layer and KV head with IceCache's DCI-tree
# selection, the Quest-style positional pages and StreamingLLM; prints each answer, the
# expected key, tokens attended and tokens/s. Without the model: the index benchmark.
set -euo pipefail
build=${1:-build}
model=${ICE_MODEL:-$build/models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -x "$build/tools/icerun/icerun" ] && [ -s "$model" ]; then
	austen=${ICE_AUSTEN:-$build/models/austen.txt}
	fillers=austen
	[ -s "$austen" ] || fillers=repeat
	exec "$build/tools/icerun/icerun" eval -m "$model" --austen "$austen" --lengths 4096 \
		--depths 1 --tasks passkey --fillers "$fillers" --budgets 128 \
		--methods full,dci,quest,stream -v
fi
echo "demo: model not fetched ($model); running the index benchmark instead" >&2
if "$build/tools/bench/icebench" --help | grep -q '^  index'; then
	exec "$build/tools/bench/icebench" index --quick
fi
echo "demo: no benchmark built yet" >&2
exit 1
