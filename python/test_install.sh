#!/usr/bin/env bash
# `pip install python/` from this checkout: the installed package loads the libicecache.so it
# bundled, from another directory, with no ICECACHE_LIB, and runs a sequence. Skips (77)
# without a python that has pip, numpy and setuptools (tools/setup.sh's venv has them).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=${ICE_PYTHON:-$here/../build/venv/bin/python}
[ -x "$py" ] || py=python3
if ! "$py" -c 'import numpy, setuptools, pip' 2>/dev/null; then
	echo "SKIP: $py lacks numpy, setuptools or pip (tools/setup.sh builds build/venv)"
	exit 77
fi
lib=${ICECACHE_LIB:-}
unset ICECACHE_LIB ICECACHE_BUILD_DIR
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# a private copy of python/, so the build leaves nothing in the checkout; the library of the
# build under test, named the way setup.py looks for it
cp -r "$here" "$tmp/src"
rm -rf "$tmp/src/build" "$tmp/src"/*.egg-info
ICECACHE_LIB=$lib "$py" -m pip install -q --disable-pip-version-check --no-deps \
	--no-build-isolation --target "$tmp/site" "$tmp/src"
cd "$tmp"
PYTHONPATH="$tmp/site" "$py" - "$tmp/site" <<'PY'
import os, sys
import numpy as np
import icecache
site = sys.argv[1]
assert icecache.__file__.startswith(site), icecache.__file__
lib = icecache.find_library()
assert lib == os.path.join(site, "icecache", "libicecache.so"), lib
with icecache.Context.embedded() as c:
    seq = c.seq_open(layers=1, q_heads=2, kv_heads=1, head_dim=16)
    k = np.ones((1, 40, 16), dtype=np.float32)
    c.append(seq, 0, k, k)
    refs = c.select(seq, 0, np.ones((2, 16), dtype=np.float32))
    assert c.fetch(seq, 0, refs).shape == (len(refs), 2, 16, 16)
print("installed package ok: %s" % lib)
PY
