#!/usr/bin/env bash
# Runs reference.py (or the reference script named first, e.g. reference_gemma.py) with the
# project's venv Python (numpy, gguf, tokenizers, sentencepiece); skips (77) when no such
# Python is found.
here=$(cd "$(dirname "$0")" && pwd)
script=reference.py
case ${1:-} in
*.py)
	script=$1
	shift
	;;
esac
for py in "${ICE_PYTHON:-}" "${ICE_BUILD_ROOT:-}/venv/bin/python" \
	"${ICE_SOURCE_ROOT:-$here/../..}/build/venv/bin/python"; do
	if [ -n "$py" ] && [ -x "$py" ]; then
		exec "$py" "$here/$script" "$@"
	fi
done
echo "SKIP: no venv python (run tools/setup.sh, or set ICE_PYTHON)"
exit 77
