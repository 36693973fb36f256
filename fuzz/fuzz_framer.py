#!/usr/bin/env python3
"""atheris harness: the native framer and field parser against the pure-Python oracle.

One input = a few control bytes (max_frame, how to cut the stream into reads) + the stream.
For every input:

- ``OctetFramer.feed`` over the random chunking == ``ReferenceFramer`` fed whole (frames,
  malformed count, mode), and the framer never holds more than ``max_frame + 2`` bytes;
- ``parse_body`` == ``reference_parse_body`` (frames, malformed);
- ``Batch.fields(i)`` == ``reference_fields`` for every frame of both batches, and for the
  whole stream taken as one payload (``parse_frames``);
- the drain/session encoders == the oracle's on the framed batch.

Any disagreement raises AssertionError (a crash for libFuzzer); a crash in C kills the
process; a hang is caught by libFuzzer's ``-timeout``.

Coverage: when the extension was built with ``-fsanitize=fuzzer-no-link`` (``fuzz/run.sh``
does that in a scratch directory), libFuzzer sees the C branches; the oracle is always
instrumented at the Python bytecode level, so the fuzzer also works (less well) on a normal
build ("pure-Python coverage mode").

Usage: python fuzz/fuzz_framer.py [libFuzzer flags] [corpus dirs]   (see fuzz/run.sh)
``check(data)`` is importable without atheris (the test suite replays the corpus with it).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.append(ROOT)  # tests.helpers.reference; a scratch build dir may come first on the path
if HERE not in sys.path:
    sys.path.append(HERE)  # _reads, when imported from elsewhere

from _reads import split  # noqa: E402

MAX_FRAMES = (1, 2, 8, 24, 64, 200, 1024, 10240, 65000)
TOKEN = b"d.0f4e2a"


def _oracle():
    from tests.helpers import reference

    return reference


def decode(buf: bytes) -> tuple[int, list[bytes], bytes]:
    """Input layout: byte 0 picks max_frame, byte 1 = n cut bytes (n % 16), then the cuts,
    then the stream."""
    if len(buf) < 2:
        return 10240, [buf], buf
    max_frame = MAX_FRAMES[buf[0] % len(MAX_FRAMES)]
    ncut = buf[1] % 16
    control = buf[2 : 2 + ncut]
    data = buf[2 + ncut :]
    return max_frame, split(data, control), data


def check(buf: bytes) -> None:
    from logplexd._native.framer import OctetFramer, parse_body, parse_frames

    from logplexd._native import encode

    ref = _oracle()
    max_frame, chunks, data = decode(buf)

    # Stream framer, random reads, against the oracle fed whole.
    framer = OctetFramer(max_frame)
    frames: list[bytes] = []
    per_feed = 0
    for chunk in chunks:
        batch = framer.feed(chunk)
        per_feed += batch.malformed
        got = batch.frames()
        for i, payload in enumerate(got):
            assert batch.fields(i) == ref.reference_fields(payload), payload
        frames += got
        assert framer.buffered <= max_frame + 2, (framer.buffered, max_frame)
    oracle = ref.ReferenceFramer(max_frame=max_frame)
    oframes, _ = oracle.feed(data)
    assert frames == oframes, "framer frames differ"
    assert framer.malformed == oracle.malformed == per_feed, (framer.malformed, oracle.malformed)
    assert framer.mode == oracle.mode, (framer.mode, oracle.mode)

    # One HTTP body.
    body = parse_body(data, max_frame)
    bframes, bbad = ref.reference_parse_body(data, max_frame)
    assert body.frames() == bframes, "parse_body frames differ"
    assert body.malformed == bbad, (body.malformed, bbad)
    for i, payload in enumerate(bframes):
        assert body.fields(i) == ref.reference_fields(payload), payload

    # The whole input as one payload (field parser on arbitrary bytes), and the encoders.
    payloads = oframes + ([data[:65000]] if data else [])
    batch = parse_frames(payloads)
    for i, payload in enumerate(payloads):
        assert batch.fields(i) == ref.reference_fields(payload), payload
    syslog = [ref.reference_syslog_frame(p, TOKEN) for p in payloads]
    http = [ref.reference_http_frame(p) for p in payloads]
    valid = sum(f is not None for f in syslog)
    big = 1 << 30
    assert encode.syslog_frames(batch, TOKEN, 0, big)[:2] == (
        b"".join(f for f in syslog if f is not None),
        valid,
    )
    assert encode.http_frames(batch, 0, big)[:2] == (
        b"".join(f for f in http if f is not None),
        valid,
    )
    assert encode.session_lines(batch) == ref.reference_session_lines(payloads)


def main() -> None:
    import atheris

    if os.environ.get("LOGPLEXD_FUZZ_NATIVE_COVERAGE") == "1":
        # The extension was built with -fsanitize=fuzzer-no-link: libFuzzer's coverage hooks
        # (in atheris' core) must be global symbols before it is loaded. Loading the same
        # file again later (atheris.Setup) returns this handle.
        import ctypes
        import glob

        core = glob.glob(os.path.join(os.path.dirname(atheris.__file__), "core_with_libfuzzer*"))
        ctypes.CDLL(core[0], mode=os.RTLD_NOW | os.RTLD_GLOBAL)

    with atheris.instrument_imports(include=["tests.helpers.reference", "tests"]):
        _oracle()
    import logplexd._native.encode  # noqa: F401
    import logplexd._native.framer  # noqa: F401

    # Always atheris' own libFuzzer (its autodetection picks an external one that is absent).
    atheris.Setup(sys.argv, check, internal_libfuzzer=True)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
