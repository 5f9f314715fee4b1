#!/usr/bin/env bash
# The house style (.clang-format) on the C and CUDA sources.
#   tools/format.sh check [FILE...]   list the files clang-format would change; exit 1 if any
#   tools/format.sh fix [FILE...]     rewrite them in place
# Without FILEs: every tracked *.c, *.h and *.cu under the source folders (git ls-files; find
# outside a git checkout). CLANG_FORMAT picks the binary (default clang-format). The style is
# kept with clang-format 14 (Debian 12, as CI installs it); other versions lay out a few lines
# differently.
set -euo pipefail

mode=${1:-}
[ $# -gt 0 ] && shift
# FILE arguments are taken relative to where the script is started from.
files=()
for f in "$@"; do
	case $f in
	/*) files+=("$f") ;;
	*) files+=("$PWD/$f") ;;
	esac
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
cf=${CLANG_FORMAT:-clang-format}
dirs=(runtime tiers index kernels tools tests include python)

case "$mode" in
check | fix) ;;
*)
	echo "usage: tools/format.sh check|fix [FILE...]" >&2
	exit 2
	;;
esac

if ! command -v "$cf" >/dev/null; then
	echo "format: $cf not found (Debian: apt-get install clang-format)" >&2
	exit 1
fi
version=$("$cf" --version | sed -n 's/.*version \([0-9]*\).*/\1/p')
[ "$version" = 14 ] ||
	echo "format: $cf is version ${version:-unknown}; the style is kept with 14:" \
		"expect a few lines laid out differently" >&2
# A bad key in .clang-format would otherwise read as "every file unformatted".
if [ ! -f .clang-format ] || ! "$cf" --style=file --dump-config >/dev/null; then
	echo "format: cannot read .clang-format" >&2
	exit 1
fi

# The files, one per line (no source file name holds a newline).
sources() {
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
		git ls-files -- "${dirs[@]}" | grep -E '\.(c|h|cu)$' || true
	else
		find "${dirs[@]}" -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' \) 2>/dev/null |
			sort
	fi
}

if [ ${#files[@]} -eq 0 ]; then
	while IFS= read -r f; do
		[ -f "$f" ] && files+=("$f")
	done < <(sources)
fi
[ ${#files[@]} -gt 0 ] || exit 0

if [ "$mode" = fix ]; then
	exec "$cf" -i --style=file "${files[@]}"
fi

bad=0
for f in "${files[@]}"; do
	if ! "$cf" --dry-run --Werror --style=file "$f" >/dev/null 2>&1; then
		echo "$f"
		bad=$((bad + 1))
	fi
done
if [ $bad -gt 0 ]; then
	echo "format: $bad file(s) not formatted: run tools/format.sh fix" >&2
	exit 1
fi
