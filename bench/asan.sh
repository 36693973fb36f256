#!/usr/bin/env bash
# Build the native extension under AddressSanitizer + UndefinedBehaviorSanitizer (gcc) in a
# scratch directory (the tree's .so files are never touched) and run the native tests with it.
#
#   bench/asan.sh [DEST] [pytest args...]      (DEST defaults to /tmp/logplexd-asan)
#
# Python itself is not instrumented: libasan is LD_PRELOADed, pymalloc is off so heap
# overflows in buffers handed to Python are seen, leak detection is off (CPython keeps
# objects alive at exit by design). Any ASan/UBSan report fails the run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-/tmp/logplexd-asan}"; shift || true
tests=(tests/test_ring.py tests/test_router.py tests/test_reference_vectors.py
       tests/test_native_properties.py tests/test_fuzz_short.py)
[ $# -gt 0 ] && tests=("$@")

san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
"$root/fuzz/build_native.sh" "$dest" "$san" "-fsanitize=address,undefined" gcc >/dev/null
# The tests run from the scratch copy so that pytest's rootdir on sys.path is the ASan build.
rm -rf "$dest/tests" && cp -r "$root/tests" "$dest/tests"
cp "$root/pyproject.toml" "$dest/"
mkdir -p "$dest/fuzz" && cp -r "$root"/fuzz/*.py "$root/fuzz/corpus" "$dest/fuzz/"
find "$dest/tests" -name __pycache__ -prune -exec rm -rf {} +

libasan="$(gcc -print-file-name=libasan.so)"
log="$dest/sanitizer.log"
rm -f "$log".*
cd "$dest"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$log:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$log:${UBSAN_OPTIONS:-}"
export PYTHONMALLOC=malloc
status=0
LD_PRELOAD="$libasan" python -c '
import os, sys
import logplexd._native.framer as f
assert f.__file__.startswith(os.getcwd()), f.__file__
print("asan build:", f.__file__)' || status=$?
LD_PRELOAD="$libasan" LOGPLEXD_PROPERTY_EXAMPLES="${LOGPLEXD_PROPERTY_EXAMPLES:-1000}" \
    python -m pytest -q -p no:cacheprovider -k "not test_short_fuzz_run" "${tests[@]}" || status=$?
echo "pytest exit status: $status"
if ls "$log".* >/dev/null 2>&1; then
    echo "sanitizer reports:"; cat "$log".*; status=1
else
    echo "sanitizers: no report"
fi
exit $status
