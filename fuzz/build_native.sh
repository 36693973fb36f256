#!/usr/bin/env bash
# Build a private copy of the native extension with extra flags, OUTSIDE the work tree, so the
# tree's own .so files (used by everyone else's tests) are never replaced by an instrumented
# build.  Usage: fuzz/build_native.sh DEST "CFLAGS" "LDFLAGS" [CC]
# DEST then holds logplexd/ (with _native/ built in place): put it first on PYTHONPATH.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$1"; cflags="$2"; ldflags="${3:-}"; cc="${4:-cc}"
mkdir -p "$dest"
# A real directory instead of the symlink: the copy must not write back into the tree.
rm -rf "$dest/logplexd" "$dest/_native"
mkdir -p "$dest/_native"
cp "$root"/_native/*.pyx "$root"/_native/*.pxd "$root"/_native/__init__.py "$dest/_native/"
cp "$root/setup.py" "$dest/"
(cd "$root" && tar cf - --exclude=_native --exclude=__pycache__ logplexd) | (cd "$dest" && tar xf -)
ln -s ../_native "$dest/logplexd/_native"
cd "$dest"
CC="$cc" LDSHARED="$cc -shared" LOGPLEXD_NATIVE_CFLAGS="$cflags" \
    LOGPLEXD_NATIVE_LDFLAGS="$ldflags" python setup.py build_ext --inplace -q >build.log 2>&1 \
    || { cat build.log; exit 1; }
echo "$dest"
