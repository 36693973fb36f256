"""Native hot path vs the pure-Python reference (pytest-benchmark; run with --benchmark-enable).

pytest bench/test_bench_native.py --benchmark-enable --benchmark-json=bench/native.json
python bench/report_native.py bench/native.json
"""

import pytest
from workloads import TOKENS, octet_stream, realistic_frames

from logplexd.native import (
    ChannelRing,
    OctetFramer,
    TokenTable,
    dispatch,
    http_frames,
    parse_frames,
    syslog_frames,
)
from tests.helpers.reference import ReferenceFramer, reference_fields

FRAMES = realistic_frames(20_000)
STREAM = octet_stream(FRAMES)
CHUNK = 256 * 1024
CHUNKS = [STREAM[i : i + CHUNK] for i in range(0, len(STREAM), CHUNK)]


def native_parse() -> int:
    framer = OctetFramer()
    n = 0
    for chunk in CHUNKS:
        n += len(framer.feed(chunk))
    return n


def reference_parse() -> int:
    framer = ReferenceFramer()
    n = 0
    for chunk in CHUNKS:
        payloads, _ = framer.feed(chunk)
        for p in payloads:
            reference_fields(p)
        n += len(payloads)
    return n


@pytest.mark.benchmark(group="framer+fields")
def test_framer_fields_native(benchmark):
    n = benchmark(native_parse)
    assert n == len(FRAMES)
    benchmark.extra_info["frames"] = n


@pytest.mark.benchmark(group="framer+fields")
def test_framer_fields_reference(benchmark):
    n = benchmark.pedantic(reference_parse, rounds=3, iterations=1)
    assert n == len(FRAMES)
    benchmark.extra_info["frames"] = n


@pytest.mark.benchmark(group="ring")
def test_ring_append_and_three_cursors(benchmark):
    batch = parse_frames(FRAMES[:2000])

    def run() -> int:
        ring = ChannelRing(1500, 4 << 20)
        cursors = [0, 0, 0]
        for _ in range(10):
            ring.append_batch(batch)
            for i, c in enumerate(cursors):
                # Readers keep up in slices of 500, as a drain or tail would.
                while True:
                    got, c, lost = ring.read(c, 500)
                    if not len(got):
                        break
                cursors[i] = c
        return 10 * len(batch)

    n = benchmark(run)
    benchmark.extra_info["messages"] = n


@pytest.mark.benchmark(group="ring")
def test_ring_read_200_from_a_deep_ring(benchmark):
    """A drain's read: 200 messages from somewhere in a 16,000-message ring."""
    ring = ChannelRing(16384, 4 << 20)
    for _ in range(8):
        ring.append_batch(parse_frames(FRAMES[:2000]))
    starts = [ring.tail + (i * 37) % 8000 for i in range(1000)]

    def run() -> int:
        n = 0
        for start in starts:
            got, _, _ = ring.read(start, 200, 1 << 20)
            n += len(got)
        return n

    n = benchmark(run)
    assert n == 200 * len(starts)
    benchmark.extra_info["messages"] = n


@pytest.mark.benchmark(group="route")
def test_dispatch_16_channels(benchmark):
    table = TokenTable()
    rings = [ChannelRing() for _ in TOKENS]
    for token, ring in zip(TOKENS, rings, strict=True):
        table.add(token.encode(), ring, b"app")
    batch = parse_frames(FRAMES)
    benchmark(dispatch, batch, table)
    benchmark.extra_info["messages"] = len(batch)


def _round_robin_frames(tokens: list[str], n: int) -> list[bytes]:
    return [
        b"<134>1 2024-05-01T12:00:00.000000Z host %s web.1 - - seq=%d %s"
        % (tokens[i % len(tokens)].encode(), i, b"x" * 60)
        for i in range(n)
    ]


@pytest.mark.benchmark(group="dispatch")
def test_dispatch_1000_channels_round_robin_into_fresh_rings(benchmark):
    # The e2e worst case (a producer taking 1,000 channels in turn, message by message):
    # each append lands in a ring untouched since the last batch, and the rings grow.
    tokens = [f"t.{i:08d}-aaaa-bbbb-cccc-dddddddddddd" for i in range(1000)]
    batches = [parse_frames(_round_robin_frames(tokens, 900)) for _ in range(100)]

    def setup():
        table = TokenTable()
        for token in tokens:
            table.add(token.encode(), ChannelRing(16384, 16 << 20), b"app")
        return (table,), {}

    def route_all(table):
        for batch in batches:
            dispatch(batch, table)

    benchmark.pedantic(route_all, setup=setup, rounds=5)
    benchmark.extra_info["messages"] = 900 * len(batches)


@pytest.mark.benchmark(group="dispatch")
def test_dispatch_1000_channels_round_robin_into_full_rings(benchmark):
    # Steady state: every ring already holds its 1,500 and evicts its oldest on each append
    # (no page is new), so what is left is the look-ups, the cold ring lines and the copy.
    tokens = [f"t.{i:08d}-aaaa-bbbb-cccc-dddddddddddd" for i in range(1000)]
    batches = [parse_frames(_round_robin_frames(tokens, 970)) for _ in range(20)]
    table = TokenTable()
    for token in tokens:
        table.add(token.encode(), ChannelRing(1500, 4 << 20), b"app")
    for _ in range(80):
        for batch in batches:
            dispatch(batch, table)

    def route_all():
        for batch in batches:
            dispatch(batch, table)

    benchmark(route_all)
    benchmark.extra_info["messages"] = 970 * len(batches)


@pytest.mark.benchmark(group="ring")
def test_append_range_1000_channels_staging_to_readers(benchmark):
    # Redis mode's own copy (``_StagedRange.append_to``): after each flush every channel's
    # written range goes from its staging ring to its readers' ring, here 150 messages each
    # (a 1,000-channel flush), both rings in their steady state. Placing a run of messages
    # at once was slower than one by one (the append alone: 27 against 23 ns a message,
    # bench/RESULTS.md, 2026-12-07 eighth).
    frames = realistic_frames(150)
    batch = parse_frames(frames)
    staging = [ChannelRing(65536, 16 << 20) for _ in range(1000)]
    readers = [ChannelRing(4096, 8 << 20, 16384) for _ in range(1000)]

    def flush():
        for ring in staging:
            ring.append_batch(batch)
        for ring, target in zip(staging, readers, strict=True):
            target.append_range(ring, ring.head - len(batch), ring.head)
            ring.discard(ring.head)

    for _ in range(40):
        flush()
    benchmark(flush)
    benchmark.extra_info["messages"] = 1000 * len(batch)


@pytest.mark.benchmark(group="encode")
def test_encode_syslog_and_http(benchmark):
    batch = parse_frames(FRAMES)

    def run() -> int:
        out, n, _ = syslog_frames(batch, b"d.61c8560e-0000-0000-0000-000000000000", 0, 1 << 30)
        out2, n2, _ = http_frames(batch, 0, 1 << 30)
        return n + n2

    benchmark(run)
    benchmark.extra_info["messages"] = 2 * len(batch)
