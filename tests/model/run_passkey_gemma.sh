#!/usr/bin/env bash
# Gemma 3 270M through libicecache end to end: 2k-token passkey cases (key at 0%, 50% and 100%
# of the Austen filler) answered under full attention and through the embedded engine at a
# 128-token budget on the global layers (the local layers keep their exact 512-token window).
# A key 1,500 tokens back is out of every local layer's reach: only the global layers, so only
# IceCache's selection, can bring it back. Passes when IceCache finds every key that full
# attention finds (at least two: the base model misses the 100% case under full attention) with
# at most the budget's tokens. Skips (77) when the model or the Austen text is absent.
set -euo pipefail
build=${ICE_BUILD_ROOT:-build}
src=${ICE_SOURCE_ROOT:-.}
model=${ICE_GEMMA_MODEL:-}
for m in "$model" "$build/models/gemma-3-270m-q4_k_m.gguf" \
	"$src/build/models/gemma-3-270m-q4_k_m.gguf"; do
	[ -n "$m" ] && [ -f "$m" ] && { model=$m; break; }
done
austen="$(dirname "${model:-/nonexistent}")/austen.txt"
if [ -z "$model" ] || [ ! -f "$model" ] || [ ! -f "$austen" ]; then
	echo "SKIP: Gemma model or Austen text missing (run tools/setup.sh)"
	exit 77
fi
if ! "$build/tools/icerun/icerun" eval --help | grep -q icecache; then
	echo "SKIP: icerun built without libicecache"
	exit 77
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# --depths 5 puts keys at 0, 25, 50, 75, 100%; shard 0/2 keeps 0%, 50% and 100%
"$build/tools/icerun/icerun" eval -m "$model" --austen "$austen" --tasks passkey \
	--fillers austen --lengths 2048 --depths 5 --shard 0/2 --methods full,icecache \
	--budgets 128 --json -v >"$out"
python3 - "$out" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))["cases"]
full = {c["depth"]: c for c in cases if c["method"] == "full"}
ice = {c["depth"]: c for c in cases if c["method"] == "icecache"}
assert len(full) == 3 and sorted(full) == sorted(ice), (sorted(full), sorted(ice))
found = 0
for d in sorted(full):
    f, i = full[d], ice[d]
    print("depth %d: key %s, full %r, icecache@128 %r (%.0f tokens/head)"
          % (d, f["key"], f["answer"], i["answer"], i["attended"]))
    assert i["attended"] < 160, "IceCache attended more than its budget allows"
    if f["correct"]:
        found += 1
        assert i["correct"], "IceCache at 128 tokens lost the key that full attention found"
assert found >= 2, "full attention found fewer than 2 keys: the task is broken"
print("ok")
PY
