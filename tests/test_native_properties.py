"""Property tests: the native hot path must agree with the pure-Python oracle on every input.

Streams are either arbitrary bytes or built from realistic pieces (RFC 5424 frames with and
without STRUCTURED-DATA, escaped ``]``, oversized frames, garbage, bad length headers,
newline-delimited streams), so that the interesting branches are hit often. The native framer
is fed whole, byte by byte and in random splits; the oracle is always fed whole, so any
dependence of the native result on read boundaries shows up as a disagreement.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from logplexd._native import encode
from logplexd.native import ChannelRing, OctetFramer, parse_body, parse_frames
from tests.helpers.reference import (
    ReferenceFramer,
    reference_channel_log_frame,
    reference_chunks,
    reference_fields,
    reference_http_frame,
    reference_parse_body,
    reference_session_lines,
    reference_stream,
    reference_syslog_frame,
)

# LOGPLEXD_PROPERTY_EXAMPLES=5000 for a longer hunt; the default keeps the file fast.
SETTINGS = settings(
    max_examples=int(os.environ.get("LOGPLEXD_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Small limits make oversized frames and long lines cheap; 10240 is the real default.
MAX_FRAMES = st.sampled_from([1, 8, 24, 64, 200, 10240])


def octet(payload: bytes) -> bytes:
    return b"%d %s" % (len(payload), payload)


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

# Header words: mostly realistic, sometimes any non-SP bytes (NUL, LF, invalid UTF-8...).
WORDS = st.one_of(
    st.sampled_from(
        [
            b"-",
            b"2013-05-27T19:59:36.538297+00:00",
            b"host",
            b"t.8ec095b4-8960-39fa-b948-e9e21f27f5de",
            b"app",
            b"heroku",
            b"web.1",
            b"router",
            b"[x]",
            b"<13>1",
            b"12",
        ]
    ),
    st.binary(min_size=1, max_size=8).map(lambda b: b.replace(b" ", b"_")),
)

# SD element content: pieces that never close the element early nor leave a lone "\".
SD_PIECES = st.sampled_from(
    [b"meta", b" ", b'x="1"', b"\\]", b"\\\\", b'\\"', b'"', b"=", b"a", b"[", b"\\x", b"\n"]
)
SD_ELEMENT = st.lists(SD_PIECES, min_size=1, max_size=6).map(lambda ps: b"[" + b"".join(ps) + b"]")
SD = st.one_of(
    st.just(b"-"),
    st.lists(SD_ELEMENT, min_size=1, max_size=3).map(b"".join),
)

MSG_TEXT = st.one_of(
    st.sampled_from(
        [b"", b"hello", b"this is the message", b'push[x] from:"a"', b"a  b", b"-", b"[x] y"]
    ),
    st.binary(max_size=40),
)
# None: no MSG at all (the frame ends right after SD).
MSG = st.one_of(
    st.none(),
    st.tuples(MSG_TEXT, st.sampled_from([b"", b"\n", b"\r\n", b"\n\n", b"\r"])).map(
        lambda t: t[0] + t[1]
    ),
)


@st.composite
def valid_payloads(draw: st.DrawFn) -> bytes:
    pri = draw(st.integers(0, 191))
    words = [draw(WORDS) for _ in range(5)]
    head = b"<%d>1 %s %s" % (pri, b" ".join(words), draw(SD))
    msg = draw(MSG)
    return head if msg is None else head + b" " + msg


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    """A valid frame with one defect (or none): the near misses a parser gets wrong."""
    p = draw(valid_payloads())
    kind = draw(st.integers(0, 9))
    close = p.index(b">")
    if kind == 0:  # PRI out of range, empty, too long or not a number
        pri = draw(st.sampled_from([b"192", b"999", b"", b"1000", b"0192", b"1a", b"-1", b"013"]))
        return b"<" + pri + p[close:]
    if kind == 1:  # another version
        return p[: close + 1] + draw(st.sampled_from([b"2", b"", b"11", b"0"])) + p[close + 2 :]
    if kind == 2:  # truncated anywhere
        return p[: draw(st.integers(0, len(p)))]
    if kind == 3:  # one SP doubled or removed
        spaces = [i for i, b in enumerate(p) if b == 0x20]
        i = draw(st.sampled_from(spaces))
        return p[:i] + draw(st.sampled_from([b"  ", b""])) + p[i + 1 :]
    if kind == 4:  # one byte replaced
        i = draw(st.integers(0, len(p) - 1))
        return p[:i] + draw(st.sampled_from([b" ", b"]", b"[", b"\\", b"\x00", b"\n"])) + p[i + 1 :]
    if kind == 5:  # MSG glued to SD
        return p + draw(st.sampled_from([b"x", b"[y]", b"-"]))
    if kind == 6:  # an SD element that never closes
        return p[: p.index(b" ", close) + 1] + b"1 2 3 4 5 [x\\]"
    return p


PAYLOADS = st.one_of(valid_payloads(), mutated_payloads(), st.binary(max_size=60))


def oversized(payload: bytes, max_frame: int) -> bytes:
    # The skipped bytes look like frames and separators: none of them may resurface.
    filler = b"\n3 abc\r\n"
    return octet(payload + filler * (max_frame // len(filler) + 1))


@st.composite
def octet_streams(draw: st.DrawFn) -> tuple[int, bytes]:
    max_frame = draw(MAX_FRAMES)
    pieces = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 9))
        p = draw(PAYLOADS)
        if kind <= 3:
            piece = octet(p)
        elif kind == 4:
            piece = oversized(p, max_frame)
        elif kind == 5:
            piece = draw(st.sampled_from([b"\n", b"\r\n", b" ", b"\r\n \r\n"]))
        elif kind == 6:  # a bad length header, then the rest of its line
            head = draw(
                st.sampled_from(
                    [b"123456789 ", b"0 ", b"12a ", b"007 ", b"99999999", b"1\r", b"5\n", b"-1 "]
                )
            )
            piece = head + p + draw(st.sampled_from([b"\n", b"\r\n", b""]))
        elif kind == 7:  # garbage line, e.g. a newline-delimited frame on an octet stream
            piece = p + b"\n"
        elif kind == 8:  # a length header alone (body cut short when it comes last)
            piece = draw(st.sampled_from([b"12", b"12 ", b"3 ab", b"12345678"]))
        else:
            piece = draw(st.binary(max_size=20))
        pieces.append(piece)
    return max_frame, b"".join(pieces)


@st.composite
def lf_streams(draw: st.DrawFn) -> tuple[int, bytes]:
    max_frame = draw(MAX_FRAMES)
    lines = [b"<" + draw(PAYLOADS).replace(b"\n", b"")]
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.integers(0, 5))
        if kind <= 2:
            line = draw(PAYLOADS).replace(b"\n", b"|")
        elif kind == 3:
            line = draw(st.sampled_from([b"", b"\r", b"\r\r", b" "]))
        elif kind == 4:  # around the length limit
            n = max_frame + draw(st.integers(-1, 2))
            line = b"<" + b"x" * max(n - 1, 0)
        else:
            line = b"x" * draw(st.integers(0, 2 * max_frame + 3)) + b"\r"
        lines.append(line)
    ends = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in lines]
    data = b"".join(line + end for line, end in zip(lines, ends, strict=True))
    if draw(st.booleans()):  # a partial line still on its way
        data += draw(st.binary(max_size=10)).replace(b"\n", b"")
    return max_frame, draw(st.sampled_from([b"", b"\r\n", b" "])) + data


@st.composite
def binary_streams(draw: st.DrawFn) -> tuple[int, bytes]:
    prefix = draw(st.sampled_from([b"", b"5 ", b"<", b"12"]))
    return draw(MAX_FRAMES), prefix + draw(st.binary(max_size=300))


STREAMS = st.one_of(octet_streams(), lf_streams(), binary_streams())


# --------------------------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------------------------


def feed_native(
    max_frame: int, chunks: list[bytes], wrap: Callable[[bytes], Any] = bytes
) -> tuple[list[bytes], int, OctetFramer]:
    """Feed chunks one read at a time; check the per-read counts add up to the total."""
    framer = OctetFramer(max_frame)
    frames: list[bytes] = []
    per_feed = 0
    for chunk in chunks:
        batch = framer.feed(wrap(chunk))
        frames += batch.frames()
        per_feed += batch.malformed
        assert framer.buffered <= max_frame + 16
    assert per_feed == framer.malformed
    return frames, framer.malformed, framer


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@SETTINGS
@given(stream=STREAMS, cuts=st.lists(st.integers(0, 400), max_size=20))
def test_framer_agrees_with_oracle(stream: tuple[int, bytes], cuts: list[int]) -> None:
    max_frame, data = stream
    expected = reference_stream(data, max_frame)

    frames, bad, framer = feed_native(max_frame, [data])
    assert (frames, bad) == expected
    batch = OctetFramer(max_frame).feed(data)
    for i, payload in enumerate(batch.frames()):
        assert batch.fields(i) == reference_fields(payload), payload

    one_by_one = [data[i : i + 1] for i in range(len(data))]
    assert feed_native(max_frame, one_by_one, bytearray)[:2] == expected

    chunks = split_at(data, [c for c in cuts if c <= len(data)])
    assert feed_native(max_frame, chunks, memoryview)[:2] == expected

    # The oracle itself must not depend on read boundaries either.
    oracle = ReferenceFramer(max_frame=max_frame)
    oracle_frames = [f for c in chunks for f in oracle.feed(c)[0]]
    assert (oracle_frames, oracle.malformed) == expected
    assert framer.mode == oracle.mode


@SETTINGS
@given(stream=st.one_of(octet_streams(), binary_streams()))
def test_parse_body_agrees_with_oracle(stream: tuple[int, bytes]) -> None:
    max_frame, data = stream
    batch = parse_body(data, max_frame)
    assert (batch.frames(), batch.malformed) == reference_parse_body(data, max_frame)
    for i, payload in enumerate(batch.frames()):
        assert batch.fields(i) == reference_fields(payload), payload


@SETTINGS
@given(payloads=st.lists(PAYLOADS, max_size=20))
def test_fields_agree_with_oracle(payloads: list[bytes]) -> None:
    batch = parse_frames(payloads)
    assert batch.frames() == payloads
    for i, payload in enumerate(payloads):
        assert batch.fields(i) == reference_fields(payload), payload


@SETTINGS
@given(payload=valid_payloads())
def test_valid_generator_makes_valid_frames(payload: bytes) -> None:
    # Guard for the strategies: the "valid" frames must be valid by the README grammar, or
    # the agreement tests above would mostly compare the invalid-frame branch.
    assert reference_fields(payload)["valid"] is True, payload


def test_mutated_generator_makes_invalid_frames() -> None:
    find(mutated_payloads(), lambda p: not reference_fields(p)["valid"])


# --------------------------------------------------------------------------------------------
# Memory bound
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_frame", [1, 100, 10240])
@pytest.mark.parametrize(
    "start",
    [b"x", b"123456789", b"12a", b"<", b"99999999 ", b"5 ab"],
    ids=["garbage", "nine-digits", "bad-header", "lf-line", "oversized", "partial"],
)
def test_buffer_stays_bounded(max_frame: int, start: bytes) -> None:
    rng = random.Random(max_frame)
    framer = OctetFramer(max_frame)
    framer.feed(start)
    for _ in range(400):
        chunk = bytes(
            rng.choice(b"abc 0123456789<>[]\r\x00\xff") for _ in range(rng.randint(1, 700))
        )
        framer.feed(chunk)
        assert framer.buffered <= max_frame + 16


@settings(max_examples=50, deadline=None)
@given(chunks=st.lists(st.binary(max_size=2000).map(lambda b: b.replace(b"\n", b"")), max_size=30))
def test_buffer_stays_bounded_without_lf(chunks: list[bytes]) -> None:
    for max_frame in (8, 10240):
        framer = OctetFramer(max_frame)
        for chunk in chunks:
            framer.feed(chunk)
            assert framer.buffered <= max_frame + 16


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------

TOKENS = st.sampled_from([b"d.fc6b856b-3332-4546-93de-7d0ee272c3bd", b"d.x", b""])


def drain_chunks(
    native: Callable[[int, int], tuple[bytes, int, int]],
    reference: list[bytes | None],
    max_bytes: int,
) -> bytes:
    """Walk a batch in max_bytes-limited chunks as a drain does; compare every chunk."""
    start, out = 0, b""
    while start < len(reference):
        chunk, n, nxt = native(start, max_bytes)
        assert nxt > start, "no progress"
        assert nxt <= len(reference)
        assert (chunk, n) == reference_chunks(reference, start, max_bytes), (start, max_bytes)
        if n > 1:
            assert len(chunk) <= max_bytes
        out += chunk
        start = nxt
    return out


@SETTINGS
@given(
    payloads=st.lists(st.one_of(valid_payloads(), PAYLOADS), max_size=15),
    token=TOKENS,
    max_bytes=st.integers(1, 600),
    exact=st.integers(0, 4),
)
def test_drain_encoders_agree_with_oracle(
    payloads: list[bytes], token: bytes, max_bytes: int, exact: int
) -> None:
    batch = parse_frames(payloads)
    syslog = [reference_syslog_frame(p, token) for p in payloads]
    http = [reference_http_frame(p) for p in payloads]
    if exact:
        # A limit the first frames fill exactly: the boundary where ">" and ">=" differ.
        max_bytes = max(1, sum(len(f) for f in [f for f in http if f is not None][:exact]))
    big = 1 << 30
    whole_syslog = b"".join(f for f in syslog if f is not None)
    whole_http = b"".join(f for f in http if f is not None)
    valid = sum(f is not None for f in http)

    assert encode.syslog_frames(batch, token, 0, big) == (whole_syslog, valid, len(payloads))
    assert encode.http_frames(batch, 0, big) == (whole_http, valid, len(payloads))

    def native_syslog(start: int, limit: int) -> tuple[bytes, int, int]:
        return encode.syslog_frames(batch, token, start, limit)

    def native_http(start: int, limit: int) -> tuple[bytes, int, int]:
        return encode.http_frames(batch, start, limit)

    assert drain_chunks(native_syslog, syslog, max_bytes) == whole_syslog
    assert drain_chunks(native_http, http, max_bytes) == whole_http

    logs = [reference_channel_log_frame(p) for p in payloads]
    assert encode.channel_log_frames(batch) == (b"".join(f for f in logs if f is not None), valid)


@SETTINGS
@given(
    payloads=st.lists(st.one_of(valid_payloads(), PAYLOADS), max_size=25),
    token=TOKENS,
    max_bytes=st.integers(1, 600),
    capacity=st.integers(1, 30),
    max_messages=st.integers(1, 8),
    cursor=st.integers(0, 30),
)
def test_ring_encoder_agrees_with_batch_encoder(
    payloads: list[bytes],
    token: bytes,
    max_bytes: int,
    capacity: int,
    max_messages: int,
    cursor: int,
) -> None:
    """``syslog_frames_from_ring`` (the drain pump's encoder, reading the ring in place)
    writes what ``syslog_frames`` (checked against the oracle above) writes of the same
    messages read out of the ring, in chunks within ``max_bytes`` and ``max_messages``, and
    counts a lapped cursor's loss as ``ChannelRing.read`` does."""
    ring = ChannelRing(capacity, 1 << 20)
    ring.append_batch(parse_frames(payloads))
    held, end, lost = ring.read(cursor, 1 << 20, 1 << 62)
    assert end == ring.head
    whole, valid, _ = encode.syslog_frames(held, token, 0, 1 << 30)
    chunks = []
    at, first = cursor, True
    while True:
        data, count, nxt, gone = encode.syslog_frames_from_ring(
            ring, at, max_messages, token, max_bytes
        )
        assert gone == (lost if first else 0)
        assert nxt - max(min(at, ring.head), ring.tail) <= max_messages
        if nxt == max(min(at, ring.head), ring.tail):
            assert data == b"" and count == 0
            break
        if count > 1:
            assert len(data) <= max_bytes
        chunks.append((data, count))
        at, first = nxt, False
    assert max(min(at, ring.head), ring.tail) == ring.head
    assert b"".join(d for d, _ in chunks) == whole
    assert sum(c for _, c in chunks) == valid


@SETTINGS
@given(
    payloads=st.lists(st.one_of(valid_payloads(), PAYLOADS), max_size=15),
    ps=st.sampled_from([None, b"web", b"web.1", b"-", b"router", b""]),
    source=st.sampled_from([None, b"app", b"heroku", b"-", b""]),
)
def test_session_lines_agree_with_oracle(
    payloads: list[bytes], ps: bytes | None, source: bytes | None
) -> None:
    batch = parse_frames(payloads)
    assert encode.session_lines(batch) == reference_session_lines(payloads)
    assert encode.session_lines(batch, ps=ps, source=source) == reference_session_lines(
        payloads, ps, source
    )


@SETTINGS
@given(stream=octet_streams(), token=TOKENS)
def test_encoders_on_framed_batches(stream: tuple[int, bytes], token: bytes) -> None:
    # Batches cut from a stream hold payloads at offsets other than a fresh parse_frames.
    max_frame, data = stream
    batch = OctetFramer(max_frame).feed(data)
    payloads = batch.frames()
    syslog = b"".join(f for p in payloads if (f := reference_syslog_frame(p, token)))
    assert encode.syslog_frames(batch, token, 0, 1 << 30)[0] == syslog
    assert encode.session_lines(batch) == reference_session_lines(payloads)


# --------------------------------------------------------------------------------------------
# Sizes the small generated streams never reach
# --------------------------------------------------------------------------------------------


def test_many_frames_and_large_batches() -> None:
    # Thousands of frames per read and batches far past any initial buffer capacity.
    rng = random.Random(6587)
    heads = [b"<13>1 t h app web.%d - - " % i for i in range(7)]
    payloads = [
        rng.choice(heads) + bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        for _ in range(3000)
    ]
    payloads += [b'<190>1 t h app p m [x a="\\]"] ' + b"m" * (65000 - 32)]
    data = b"".join(octet(p) for p in payloads)
    expected = reference_stream(data, 65000)
    assert expected == (payloads, 0)
    cuts = [rng.randrange(len(data)) for _ in range(300)]
    assert feed_native(65000, split_at(data, cuts))[:2] == expected
    batch = parse_body(data, 65000)
    assert (batch.frames(), batch.malformed) == expected
    for i in [*range(0, 3000, 97), len(payloads) - 1]:
        assert batch.fields(i) == reference_fields(payloads[i])
    assert batch.fields(len(payloads) - 1)["msg"] == b"m" * (65000 - 32)

    syslog = [reference_syslog_frame(p, b"d.x") for p in payloads]
    out = drain_chunks(lambda s, m: encode.syslog_frames(batch, b"d.x", s, m), syslog, 4096)
    assert out == b"".join(f for f in syslog if f is not None)
    assert encode.session_lines(batch) == reference_session_lines(payloads)


@given(
    payloads=st.lists(st.one_of(PAYLOADS, st.binary(min_size=9990, max_size=10010)), max_size=12),
    start=st.integers(-2, 14),
    end=st.integers(-2, 14),
)
def test_octet_frames_are_len_sp_payload_and_parse_back(payloads, start, end):
    # As the Redis stream and the disk backlog store a batch: every non-empty frame of
    # [start, end) as RFC 6587 LEN SP payload, read back into the same frames.
    from logplexd.native import octet_frames

    batch = parse_frames(payloads)
    frames = batch.frames()
    lo = max(start, 0)
    hi = len(frames) if end < 0 or end > len(frames) else end
    expected = b"".join(b"%d %s" % (len(f), f) for f in frames[lo:hi] if f)
    wire = octet_frames(batch, start, end)
    assert wire == expected
    assert parse_body(wire, 65000).frames() == [f for f in frames[lo:hi] if f]


@given(
    payloads=st.lists(PAYLOADS, max_size=12),
    start=st.integers(0, 12),
    end=st.integers(0, 12),
    max_bytes=st.integers(-1, 600),
)
def test_octet_frames_upto_ends_after_the_frame_that_reaches_its_bound(
    payloads: list[bytes], start: int, end: int, max_bytes: int
) -> None:
    """A stream read for a lapped drain (``History.read_range``) takes frames of an entry
    up to a byte budget: those of ``octet_frames`` from ``start``, through the first whose
    payload bytes reach ``max_bytes`` (at least one), with their count and payload bytes."""
    from logplexd.native import octet_frames, octet_frames_upto

    batch = parse_frames(payloads)
    frames = batch.frames()
    end = min(end, len(frames))
    count, payload = 0, 0
    for frame in frames[start:end]:
        if count and payload >= max_bytes:
            break
        count += 1
        payload += len(frame)
    assert octet_frames_upto(batch, start, end, max_bytes) == (
        octet_frames(batch, start, start + count) if count else b"",
        count,
        payload,
    )


@SETTINGS
@given(
    payloads=st.lists(st.one_of(valid_payloads(), PAYLOADS), max_size=25),
    max_bytes=st.integers(0, 600),
    capacity=st.integers(1, 30),
    max_messages=st.integers(0, 8),
    cursor=st.integers(0, 30),
)
def test_octet_frames_from_the_ring_are_those_of_the_batch_read_out(
    payloads: list[bytes], max_bytes: int, capacity: int, max_messages: int, cursor: int
) -> None:
    """A drain's disk backlog encodes its messages where they lie in the ring: the same
    bytes, count, next cursor and loss as ``octet_frames`` of ``ChannelRing.read``."""
    from logplexd.native import octet_frames, octet_frames_from_ring

    ring = ChannelRing(capacity, 1 << 20)
    ring.append_batch(parse_frames(payloads))
    batch, nxt, lost = ring.read(cursor, max_messages, max_bytes)
    assert octet_frames_from_ring(ring, cursor, max_messages, max_bytes) == (
        octet_frames(batch),
        len(batch),
        nxt,
        lost,
    )
