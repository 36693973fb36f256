#!/usr/bin/env python3
"""atheris harness: the HTTP server (``logplexd/web/server.py``) against raw client bytes.

One input = 2 control bytes + the bytes a client sends, cut into reads (``split`` of
``fuzz_framer.py``'s layout: byte 0 picks the body limit and whether the client half-closes
after sending, byte 1 = n cut bytes, then the cuts, then the stream). The server runs one
connection over an in-memory stream with a virtual clock, so its timeouts cost nothing and
say when it waited. For every input:

- the server ends (the clock jumps past its timeouts) and never raises;
- what it writes is a sequence of well-formed HTTP/1.1 responses, none 5xx but 501, with
  nothing after one that says ``Connection: close``;
- the handler never sees a request with both Content-Length and Transfer-Encoding, nor a
  body over the limit;
- a first request whose head has both Content-Length and Transfer-Encoding gets one
  4xx/501 at once and the connection closes: a pipelined request after it is never
  answered (request smuggling, issue 22);
- a first request whose chunk headers declare more than the limit gets its answer at once
  (not after the body timeout), never 2xx or 408 (issue 22).

Usage: python fuzz/fuzz_http.py [libFuzzer flags] [corpus dirs]   (as fuzz_framer.py)
``check(data)`` is importable without atheris (the test suite replays the corpus with it).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.append(ROOT)
if HERE not in sys.path:
    sys.path.append(HERE)  # _reads, when imported from elsewhere

from _reads import split  # noqa: E402

MAX_BODIES = (16, 1024, 65536)
BODY_TIMEOUT = 30.0


def decode(buf: bytes) -> tuple[int, bool, list[bytes], bytes]:
    """(max_body, half-close after sending, reads, stream)."""
    if len(buf) < 2:
        return MAX_BODIES[0], True, [buf], buf
    max_body = MAX_BODIES[buf[0] % len(MAX_BODIES)]
    half_close = not buf[0] & 0x80
    ncut = buf[1] % 16
    control = buf[2 : 2 + ncut]
    data = buf[2 + ncut :]
    return max_body, half_close, split(data, control), data


def seed(stream: bytes, *, max_body: int = 16, half_close: bool = True) -> bytes:
    """The corpus file for ``stream`` sent in one read."""
    first = MAX_BODIES.index(max_body) | (0 if half_close else 0x80)
    return bytes([first, 0]) + stream


# -- an oracle for the first request's framing, independent of h11 ------------------------------


def first_head(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
    """(header fields with lower-case names, the bytes after the head), or None when the
    first head is not complete. Lines end in LF or CRLF, as h11 reads them."""
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        return [], data  # a blank line first: no request line (h11's 400)
    blank = re.search(rb"\n\r?\n", data)
    if blank is None:
        return None
    lines = re.split(rb"\r?\n", data[: blank.start()])[1:]
    fields = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if colon:
            fields.append((name.strip().lower(), value.strip()))
    return fields, data[blank.end() :]


def declared_chunks_over(body: bytes, limit: int) -> bool:
    """True when the chunk headers of ``body`` declare more than ``limit`` bytes before
    the last chunk, the end of the data, or anything malformed."""
    total, pos = 0, 0
    while True:
        end = body.find(b"\n", pos)
        if end < 0:
            return False
        m = re.match(rb"([0-9A-Fa-f]{1,20})(?![0-9A-Fa-f])", body[pos:end])
        if not m:
            return False
        size = int(m.group(1), 16)
        if size == 0:
            return False
        total += size
        if total > limit:
            return True
        pos = end + 1 + size + 2


# -- the run -----------------------------------------------------------------------------------


def parse_responses(out: bytes) -> list[tuple[int, dict[bytes, bytes], int]]:
    """(status, headers, offset of the response in ``out``) of each response."""
    responses = []
    pos = 0
    while pos < len(out):
        start = pos
        end = out.find(b"\r\n\r\n", pos)
        assert end >= 0, f"incomplete response head at {pos}: {out[pos : pos + 200]!r}"
        status_line, *lines = out[pos:end].split(b"\r\n")
        m = re.fullmatch(rb"HTTP/1\.1 (\d{3}) [^\r\n]*", status_line)
        assert m, status_line
        status = int(m.group(1))
        headers = {}
        for line in lines:
            name, _, value = line.partition(b": ")
            headers[name.lower()] = value
        pos = end + 4
        # A response to HEAD has a Content-Length and no body; every body here is a JSON
        # object (the handler's and the server's errors), so "{" tells whether one follows.
        if status >= 200 and out[pos : pos + 1] == b"{":
            length = int(headers.get(b"content-length", b"0"))
            assert b"transfer-encoding" not in headers
            pos += length
            assert pos <= len(out), "response body cut short"
        responses.append((status, headers, start))
    return responses


def check(buf: bytes) -> None:
    import trio
    import trio.testing

    from logplexd.web import Request, Response, ServerLimits, serve_stream

    max_body, half_close, reads, data = decode(buf)
    limits = ServerLimits(max_body=max_body, body_timeout=BODY_TIMEOUT)
    seen: list[Request] = []
    written: list[tuple[float, bytes]] = []
    sent_at: list[float] = []

    violations: list[str] = []

    async def handler(request: Request) -> Response:
        names = {name for name, _ in request.headers}
        if {"content-length", "transfer-encoding"} <= names:
            violations.append(f"the handler saw both framings: {request.headers}")
        if len(request.body) > max_body:
            violations.append(f"the handler saw a body of {len(request.body)} > {max_body}")
        seen.append(request)
        return Response.json(200, {"n": len(seen)})

    async def client(stream: trio.abc.HalfCloseableStream) -> None:
        for piece in reads:
            if piece:
                try:
                    await stream.send_all(piece)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
        sent_at.append(trio.current_time())
        if half_close:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_eof()

    async def reader(stream: trio.abc.HalfCloseableStream) -> None:
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            written.append((trio.current_time(), chunk))

    async def main() -> None:
        server_end, client_end = trio.testing.memory_stream_pair()
        with trio.fail_after(3600):  # virtual: only a server that never ends reaches it
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_stream, server_end, handler, limits)
                nursery.start_soon(client, client_end)
                await reader(client_end)
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    assert not violations, violations
    out = b"".join(chunk for _, chunk in written)
    responses = parse_responses(out)
    for _, headers, _ in responses[:-1]:
        assert headers.get(b"connection") != b"close", "a response after Connection: close"
    for status, _, _ in responses:
        assert status < 500 or status == 501, status
    final = [r for r in responses if r[0] >= 200]

    head = first_head(data)
    if head is None or not final:
        return
    fields, rest = head
    names = {name for name, _ in fields}
    status, headers, offset = final[0]
    waited = _written_at(written, offset) - sent_at[0] if sent_at else 0.0
    if {b"content-length", b"transfer-encoding"} <= names:
        assert 400 <= status < 500 or status == 501, status
        assert len(final) == 1 and headers.get(b"connection") == b"close", final
        assert not seen, seen
        assert waited < BODY_TIMEOUT / 2, waited
    elif b"transfer-encoding" in names and declared_chunks_over(rest, max_body):
        assert status != 408 and not 200 <= status < 300, status
        assert waited < BODY_TIMEOUT / 2, waited


def _written_at(written: list[tuple[float, bytes]], offset: int) -> float:
    """When the byte at ``offset`` of the server's output was written (virtual clock)."""
    pos = 0
    for at, chunk in written:
        pos += len(chunk)
        if offset < pos:
            return at
    raise AssertionError("offset beyond the output")


def main() -> None:
    import atheris

    with atheris.instrument_imports():
        import h11  # noqa: F401

        import logplexd.web.server  # noqa: F401

    def test_one_input(data: bytes) -> None:
        check(data)

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
