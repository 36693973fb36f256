#!/usr/bin/env bash
# Long fuzz runs of the native framer/field parser against the pure-Python oracle.
#
#   fuzz/run.sh [SECONDS] [extra libFuzzer flags...]     (default 600 s; 0 = until a finding)
#
# With clang present, the extension is rebuilt in a scratch directory (never in the tree)
# with -fsanitize=fuzzer-no-link so libFuzzer sees the C branches ("native coverage"); without
# clang, the tree's normal build is fuzzed with coverage of the Python oracle only
# ("pure-Python coverage mode"). Needs: pip install atheris.
# Env: FUZZ_JOBS (parallel jobs, default 1), FUZZ_WORK (default fuzz/work), FUZZ_SEED.
# New interesting inputs accumulate in $FUZZ_WORK/corpus (seeded from fuzz/corpus/framer);
# crashes, disagreements and hangs are written to $FUZZ_WORK/artifacts/. Replay one with
#   python fuzz/fuzz_framer.py $FUZZ_WORK/artifacts/crash-...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
seconds="${1:-600}"; shift || true
work="${FUZZ_WORK:-$here/work}"
mkdir -p "$work/corpus" "$work/artifacts"
cp -n "$here"/corpus/framer/* "$work/corpus/" 2>/dev/null || true

if command -v clang >/dev/null 2>&1; then
    "$here/build_native.sh" "$work/build" "-fsanitize=fuzzer-no-link -O1 -g" \
        "-fsanitize=fuzzer-no-link" clang >/dev/null
    export PYTHONPATH="$work/build${PYTHONPATH:+:$PYTHONPATH}"
    export LOGPLEXD_FUZZ_NATIVE_COVERAGE=1
    echo "fuzz: native coverage (clang -fsanitize=fuzzer-no-link build in $work/build)"
else
    echo "fuzz: clang not found: pure-Python coverage mode (oracle instrumented only)"
fi

jobs=()
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS"); fi
cd "$work"
exec python "$here/fuzz_framer.py" -max_total_time="$seconds" -timeout=10 -max_len=8192 \
    -rss_limit_mb=2048 -seed="${FUZZ_SEED:-0}" -artifact_prefix="$work/artifacts/" \
    ${jobs[@]+"${jobs[@]}"} "$@" "$work/corpus"
