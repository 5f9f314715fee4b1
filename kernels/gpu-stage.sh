#!/usr/bin/env bash
# Prepares a device run (the device tool sends the main checkout, not a worktree): copies this
# tree (without build dirs and .git) to DEST (default /work/main/.devwork, git-ignored) and
# puts the GPU test programs and icebench from BUILD (default build) in DEST/devbin, with the
# shared libraries they need that the device image lacks in DEST/devbin/lib.
# Then: device run with carry [".devwork"] and
#   cd .devwork && OUT=$OUT BIN=devbin PYTHON=python3 bash kernels/gpu-run.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${DEST:-/work/main/.devwork}
BUILD=${BUILD:-build}
cd "$here"
rm -rf "$DEST"
mkdir -p "$DEST/devbin/lib"
# the sources as git sees them (tracked and untracked-not-ignored): no build dirs, no staging
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C "$DEST" -xf -
# BINS: the programs to stage (default: the GPU tests and icebench); tools/icerun/icerun for a
# real-model grid on the device's CPUs (docs/BENCHMARKS.md, run D).
BINS=${BINS:-"tests/kernels/test_kern_gpu tests/kernels/test_hbm_gpu tools/bench/icebench"}
for f in $BINS; do
	cp "$BUILD/$f" "$DEST/devbin/"
	# Everything but the C runtime, which the device has.
	ldd "$BUILD/$f" | awk '$3 ~ /^\// {print $3}' |
		grep -v -E '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' |
		while read -r l; do cp -L "$l" "$DEST/devbin/lib/"; done
done
du -sh "$DEST"
