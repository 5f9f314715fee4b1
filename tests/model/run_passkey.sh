#!/usr/bin/env bash
# The real model through libicecache end to end: three 1k-token passkey cases (key at 0%, 50%
# and 100% of the Austen filler) answered under full attention and through the embedded engine
# at a 64-token budget. Passes when full attention finds every key and IceCache gives the same
# answers. The 0% case is one that round-robin page sharing in a GQA group lost (engine
# group_merge = 0; ICE_ENGINE passes such settings to check that this test notices).
# Skips (77) when the model or the Austen text is absent (tools/setup.sh fetches both).
set -euo pipefail
build=${ICE_BUILD_ROOT:-build}
src=${ICE_SOURCE_ROOT:-.}
model=${ICE_MODEL:-}
for m in "$model" "$build/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
	"$src/build/models/SmolLM2-135M-Instruct.Q4_1.gguf"; do
	[ -n "$m" ] && [ -f "$m" ] && { model=$m; break; }
done
austen="$(dirname "${model:-/nonexistent}")/austen.txt"
if [ -z "$model" ] || [ ! -f "$model" ] || [ ! -f "$austen" ]; then
	echo "SKIP: model or Austen text missing (run tools/setup.sh)"
	exit 77
fi
# engine settings that do not exist are refused, not ignored
if "$build/tools/icerun/icerun" eval -m "$model" --austen "$austen" --lengths 1024 \
	--methods icecache --budgets 64 --engine no_such_setting=1 2>/dev/null; then
	echo "FAIL: icerun eval accepted --engine no_such_setting=1"
	exit 1
fi
# so is a --rest that is neither 0 nor 1
if "$build/tools/icerun/icerun" eval -m "$model" --austen "$austen" --lengths 1024 \
	--methods icecache --budgets 64 --rest 2 2>/dev/null; then
	echo "FAIL: icerun eval accepted --rest 2"
	exit 1
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# --depths 5 puts keys at 0, 25, 50, 75, 100%; shard 0/2 keeps 0%, 50% and 100%
"$build/tools/icerun/icerun" eval -m "$model" --austen "$austen" --tasks passkey \
	--fillers austen --lengths 1024 --depths 5 --shard 0/2 --methods full,icecache \
	--budgets 64 ${ICE_ENGINE:+--engine "$ICE_ENGINE"} --json -v >"$out"
python3 - "$out" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))["cases"]
full = {c["depth"]: c for c in cases if c["method"] == "full"}
ice = {c["depth"]: c for c in cases if c["method"] == "icecache"}
assert len(full) == 3 and sorted(full) == sorted(ice), (sorted(full), sorted(ice))
for d in sorted(full):
    f, i = full[d], ice[d]
    print("depth %d: key %s, full %r, icecache@64 %r (%.0f tokens/head)"
          % (d, f["key"], f["answer"], i["answer"], i["attended"]))
    assert f["correct"], "full attention missed the key: the task is broken"
    assert i["correct"], "IceCache at 64 tokens lost the key that full attention found"
    assert i["attended"] < 100, "IceCache attended more than its budget allows"
print("ok")
PY
