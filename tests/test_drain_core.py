"""Sans-IO drain cores: URL targets, request bytes, classification, backoff, states, feed."""

from __future__ import annotations

import hashlib
import random
import re

import h11
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from logplexd import __version__
from logplexd.backlog import BacklogStore
from logplexd.drains import (
    TRANSITIONS,
    DrainEvent,
    DrainFeed,
    DrainState,
    HttpExchange,
    InvalidDrainUrl,
    InvalidTransition,
    LossTracker,
    Outcome,
    Payload,
    Refilled,
    build_request,
    classify,
    delivery_target,
    frame_id,
    http_retry_backoff,
    next_state,
    syslog_reconnect_backoff,
)
from logplexd.native import (
    http_frames,
    l10_http,
    l10_syslog,
    parse_frames,
    syslog_frames,
    syslog_frames_from_ring,
)
from logplexd.router.registry import Registry
from logplexd.store import DrainKind, parse_drain_url
from tests.helpers.drains import TOKEN, append, delivered, l10_total, message

# -- targets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "host", "port", "insecure"),
    [
        ("syslog://logs.example.com", DrainKind.SYSLOG, "logs.example.com", 601, False),
        ("syslog://logs.example.com:1514", DrainKind.SYSLOG, "logs.example.com", 1514, False),
        ("syslog+tls://Logs.Example.com", DrainKind.SYSLOG_TLS, "logs.example.com", 6514, False),
        ("syslog+tls://h:7000#insecure", DrainKind.SYSLOG_TLS, "h", 7000, True),
        ("http://h/x", DrainKind.HTTP, "h", 80, False),
        ("https://h/x", DrainKind.HTTPS, "h", 443, False),
    ],
)
def test_target_defaults(url, kind, host, port, insecure):
    target = parse_drain_url(url)
    assert (target.kind, target.host, target.port, target.insecure) == (kind, host, port, insecure)


def test_http_target_parts():
    target = parse_drain_url("https://us%40r:p%3Ass@Example.com:8443/v1/logs?a=1&b=2#frag")
    assert target.request_target == b"/v1/logs?a=1&b=2"  # fragment never sent
    assert target.host_header == b"Example.com:8443"
    assert target.authorization == b"Basic dXNAcjpwOnNz"  # base64("us@r:p:ss")
    assert "p%3Ass" not in target.redacted and "p%3Ass" not in repr(target)
    bare = parse_drain_url("http://example.com")
    assert (bare.request_target, bare.host_header, bare.authorization) == (
        b"/",
        b"example.com",
        None,
    )


@pytest.mark.parametrize(
    "url", ["", "ftp://h/", "udpsyslog://h", "syslog://", "http://h:0/", "syslog+tls://h#x"]
)
def test_invalid_targets(url):
    with pytest.raises(InvalidDrainUrl):
        parse_drain_url(url)


def test_a_host_without_ascii_form_is_stored_but_not_delivered_to():
    url = "http://\u00fc..x/"  # no IDNA form: no Host header can name it
    assert parse_drain_url(url).undeliverable == "bad host"
    with pytest.raises(InvalidDrainUrl, match="bad host"):
        delivery_target(url)


# -- request bytes ------------------------------------------------------------------------


def _payload(body: bytes, messages: int, loss: int = 0) -> Payload:
    payload = Payload(body, messages, loss, parse_frames([]), 0)
    payload.frame_id = frame_id(body)
    return payload


def test_request_bytes_exact():
    body = b"10 0123456789"
    target = parse_drain_url("https://user:pass@example.com:8080/logs?x=1#ignored")
    request = build_request(
        target, _payload(body, 1), drain_token=TOKEN, user_agent=f"logplexd/{__version__}"
    )
    exchange = HttpExchange()
    wire = exchange.start(request, body)
    md5 = hashlib.md5(body).hexdigest().upper()
    assert wire == (
        b"POST /logs?x=1 HTTP/1.1\r\n"
        b"Host: example.com:8080\r\n"
        b"Authorization: Basic dXNlcjpwYXNz\r\n"
        b"Content-Type: application/logplex-1\r\n"
        b"Logplex-Msg-Count: 1\r\n"
        b"Logplex-Frame-Id: " + md5.encode() + b"\r\n"
        b"Logplex-Drain-Token: " + TOKEN.encode() + b"\r\n"
        b"User-Agent: logplexd/" + __version__.encode() + b"\r\n"
        b"Content-Length: 13\r\n"
        b"\r\n" + body
    )
    assert len(md5) == 32


def test_request_with_loss_notice_counts_the_l10_frame():
    notice = l10_http(5, 0, 60)
    frames, n, _ = http_frames(parse_frames([message(6)]), 0, 102400)
    body = notice + frames
    request = build_request(
        parse_drain_url("http://h/"), _payload(body, n, loss=5), drain_token=TOKEN, user_agent="u"
    )
    headers = dict(request.headers)
    assert headers[b"logplex-msg-count"] == b"2"
    assert headers[b"logplex-msg-loss-count"] == b"5"
    assert b"Authorization" not in body
    assert body.startswith(
        b"142 <172>1 1970-01-01T00:01:00+00:00 host heroku logplex - Error L10 (output buffer "
        b"overflow): 5 messages dropped since 1970-01-01T00:00:00+00:00.76 <134>1 "
    )


def test_exchange_keep_alive_and_close():
    exchange = HttpExchange()
    request = build_request(
        parse_drain_url("http://h/"), _payload(b"x", 1), drain_token=TOKEN, user_agent="u"
    )
    exchange.start(request, b"x")
    assert not exchange.feed(b"HTTP/1.1 204 No Content\r\n")
    assert exchange.feed(b"\r\n")
    assert exchange.status == 204 and exchange.reusable()
    exchange.start(request, b"x")
    assert exchange.feed(b"HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno")
    assert exchange.status == 500 and not exchange.reusable()
    fresh = HttpExchange()
    fresh.start(request, b"x")
    with pytest.raises((EOFError, h11.RemoteProtocolError)):
        fresh.feed(b"")
    assert not fresh.received_any


# -- classification and backoff ----------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (202, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (299, Outcome.DELIVERED),
        (400, Outcome.DROP),
        (401, Outcome.DROP),
        (404, Outcome.DROP),
        (413, Outcome.DROP),
        (499, Outcome.DROP),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
        (301, Outcome.RETRY),
        (101, Outcome.RETRY),
        (trio.TooSlowError(), Outcome.RETRY),
        (ConnectionResetError(), Outcome.RETRY),
        (trio.BrokenResourceError(), Outcome.RETRY),
        (EOFError(), Outcome.RETRY),
    ],
)
def test_classify(result, outcome):
    assert classify(result) is outcome


def test_http_backoff_bounds():
    rng = random.Random(1)
    assert http_retry_backoff(0, rng) == 0
    for failures in range(1, 40):
        step = min(30.0, 0.5 * 2 ** (failures - 1))
        for _ in range(50):
            delay = http_retry_backoff(failures, rng)
            assert step / 2 <= delay <= step
    assert http_retry_backoff(1000, rng) <= 30.0


def test_syslog_backoff_follows_reference():
    rng = random.Random(2)
    assert syslog_reconnect_backoff(0, rng) == 0
    for failures, step in [(1, 2), (2, 4), (3, 8), (8, 256), (9, 300), (50, 300)]:
        for _ in range(50):
            assert step <= syslog_reconnect_backoff(failures, rng) <= step * 1.1


# -- states -------------------------------------------------------------------------------


def test_transitions_happy_path_and_failures():
    s = DrainState.DISCONNECTED
    for event, expected in [
        (DrainEvent.CONNECT, DrainState.CONNECTING),
        (DrainEvent.FAILED, DrainState.BACKOFF),
        (DrainEvent.CONNECT, DrainState.CONNECTING),
        (DrainEvent.CONNECTED, DrainState.CONNECTED),
        (DrainEvent.SEND, DrainState.SENDING),
        (DrainEvent.SENT, DrainState.CONNECTED),
        (DrainEvent.SEND, DrainState.SENDING),
        (DrainEvent.FAILED, DrainState.BACKOFF),
        (DrainEvent.CLOSED, DrainState.DISCONNECTED),
        (DrainEvent.STOP, DrainState.STOPPED),
    ]:
        s = next_state(s, event)
        assert s is expected


def test_invalid_transitions_raise_and_every_state_can_stop():
    with pytest.raises(InvalidTransition):
        next_state(DrainState.DISCONNECTED, DrainEvent.SEND)
    with pytest.raises(InvalidTransition):
        next_state(DrainState.STOPPED, DrainEvent.CONNECT)
    assert all(TRANSITIONS[(s, DrainEvent.STOP)] is DrainState.STOPPED for s in DrainState)
    # Every live state can lose its connection without an error.
    for state in set(DrainState) - {DrainState.STOPPED}:
        assert TRANSITIONS[(state, DrainEvent.CLOSED)] is DrainState.DISCONNECTED


# -- loss and feed ------------------------------------------------------------------------


def test_loss_tracker_keeps_first_time_and_settles_only_what_was_announced():
    loss = LossTracker()
    loss.add(3, 100.0)
    loss.add(2, 200.0)
    assert (loss.count, loss.since) == (5, 100.0)
    loss.settle(4)
    assert loss.count == 1
    loss.settle(4)
    loss.add(1, 300.0)
    assert (loss.count, loss.since) == (1, 300.0)


def _syslog(batch, start, max_bytes):
    return syslog_frames(batch, TOKEN.encode(), start, max_bytes)


def _l10(n, since, now):
    return l10_syslog(TOKEN.encode(), n, since, now)


def test_feed_starts_at_head_and_reports_exact_loss_after_being_lapped():
    registry = Registry(history_messages=10)
    channel = registry.ensure_channel("app")
    append(channel, [message(i) for i in range(3)])  # before the drain: never delivered
    feed = DrainFeed(registry, "app", wall_clock=lambda: 1355108448.0)
    assert not feed.has_data()
    append(channel, [message(i) for i in range(3, 28)])  # 25 new; the ring keeps 18..27
    payload = feed.build_payload(_syslog, _l10, max_messages=100, max_bytes=1 << 20)
    assert payload is not None
    assert (payload.messages, payload.loss_announced, feed.counters.lost) == (10, 15, 15)
    notice = (
        b"<172>1 2012-12-10T03:00:48+00:00 " + TOKEN.encode() + b" heroku logplex - - Error "
        b"L10 (output buffer overflow): 15 messages dropped since 2012-12-10T03:00:48+00:00.\n"
    )
    assert payload.data.startswith(b"%d %s" % (len(notice), notice))
    assert payload.data.endswith(b"drain test message 27\n")
    feed.delivered(payload)
    assert feed.loss.count == 0 and feed.counters.delivered == 10 and not feed.has_data()


def test_feed_drop_feeds_the_next_notice_and_failed_payload_is_rebuilt():
    registry = Registry(history_messages=100)
    channel = registry.ensure_channel("app")
    feed = DrainFeed(registry, "app", wall_clock=lambda: 0.0)
    append(channel, [message(i) for i in range(5)])
    first = feed.build_payload(_syslog, _l10, max_messages=100, max_bytes=1 << 20)
    assert first is not None and first.messages == 5
    # Not settled: the next build returns the same messages again.
    again = feed.build_payload(_syslog, _l10, max_messages=100, max_bytes=1 << 20)
    assert again is not None and again.data == first.data
    feed.dropped(again)
    assert (feed.counters.dropped, feed.loss.count) == (5, 5)
    append(channel, [message(6)])
    after = feed.build_payload(_syslog, _l10, max_messages=100, max_bytes=1 << 20)
    assert after is not None and after.loss_announced == 5 and after.messages == 1
    assert b"5 messages dropped" in after.data and b"message 0" not in after.data


def test_feed_splits_a_batch_by_bytes_and_skips_invalid_frames():
    registry = Registry()
    channel = registry.ensure_channel("app")
    feed = DrainFeed(registry, "app")
    append(channel, [message(0), b"not syslog at all", *[message(i) for i in range(1, 40)]])
    sizes = []
    while payload := feed.build_payload(_syslog, _l10, max_messages=100, max_bytes=300):
        assert len(payload.data) <= 300
        sizes.append(payload.messages)
        feed.delivered(payload)
    assert sum(sizes) == 40 and len(sizes) > 5


def _syslog_ring(ring, cursor, max_messages, max_bytes):
    return syslog_frames_from_ring(ring, cursor, max_messages, TOKEN.encode(), max_bytes)


# One pump round for a drain: how many messages were routed before it, and what became of
# its payload ("whole": written; "partial": the drain's task finished it; "error": not
# written, the next connection writes it again).
ROUNDS = st.lists(
    st.tuples(st.integers(0, 25), st.sampled_from(["whole", "partial", "error"])), max_size=25
)


def _run_rounds(
    rounds: list[tuple[int, str]], *, in_place: bool, history: int, max_bytes: int
) -> tuple[bytes, DrainFeed, int]:
    """What a drain written as the pump writes it sends over ``rounds``, then drained out:
    (the bytes its receiver got, its feed, how many messages were routed)."""
    registry = Registry(history_messages=history, buffer_messages=history)
    channel = registry.ensure_channel("app")
    feed = DrainFeed(registry, "app", wall_clock=lambda: 0.0)
    encode_ring = _syslog_ring if in_place else None
    sent, routed = [], 0
    # Then written out whole until nothing is left (at most one payload per message).
    for appended, outcome in [*rounds, *[(0, "whole")] * (25 * len(rounds) + 1)]:
        frames = [message(routed + k) for k in range(appended)]
        if frames:
            append(channel, frames)
        routed += appended
        payload = feed.build_payload(
            _syslog, _l10, max_messages=7, max_bytes=max_bytes, encode_ring=encode_ring
        )
        if payload is None:
            continue
        if outcome == "error":
            feed.keep_unsettled(payload)  # as DrainPump does before handing the drain back
            continue
        if outcome == "partial":
            feed.keep_unsettled(payload)
        sent.append(payload.data)
        feed.delivered(payload)
    return b"".join(sent), feed, routed


@settings(max_examples=300, deadline=None)
@given(rounds=ROUNDS, max_bytes=st.integers(1, 900))
def test_encoding_in_the_ring_sends_what_a_taken_batch_sends(rounds, max_bytes):
    """A ring that never laps the drain: the same bytes, payload by payload, either way."""
    ours, feed, routed = _run_rounds(rounds, in_place=True, history=2000, max_bytes=max_bytes)
    theirs, other, _ = _run_rounds(rounds, in_place=False, history=2000, max_bytes=max_bytes)
    assert ours == theirs == b"".join(delivered(i) for i in range(routed))
    assert feed.counters.delivered == other.counters.delivered == routed
    assert feed.counters.lost == 0 and not feed.has_data()


@settings(max_examples=300, deadline=None)
@given(rounds=ROUNDS, history=st.integers(1, 12), max_bytes=st.integers(1, 900))
def test_encoding_in_the_ring_delivers_or_counts_every_message(rounds, history, max_bytes):
    """A small ring that laps the drain: every routed message is delivered once, in order,
    or counted lost and announced by an exact L10, and the rest of a payload not written
    whole is never lapped."""
    data, feed, routed = _run_rounds(rounds, in_place=True, history=history, max_bytes=max_bytes)
    numbers = [int(n) for n in re.findall(rb"drain test message (\d+)\n", data)]
    assert numbers == sorted(set(numbers))
    assert feed.counters.delivered == len(numbers)
    assert feed.counters.delivered + feed.counters.lost == routed
    assert l10_total(data) == feed.counters.lost
    assert not feed.has_data()


def test_feed_follows_a_replaced_channel():
    registry = Registry()
    channel = registry.ensure_channel("app")
    feed = DrainFeed(registry, "app")
    append(channel, [message(1)])
    registry.drop_channel("app")
    assert feed.has_data()  # the old channel's backlog still goes out
    payload = feed.build_payload(_syslog, _l10, max_messages=100, max_bytes=1 << 20)
    assert payload is not None
    feed.delivered(payload)
    assert not feed.has_data()
    new = registry.ensure_channel("app")
    append(new, [message(2)])
    payload = feed.build_payload(_syslog, _l10, max_messages=100, max_bytes=1 << 20)
    assert payload is not None and payload.data.endswith(b"message 2\n")
    assert payload.loss_announced == 0


class ListRefill:
    """A stand-in for the channel's stream (``drains.RingRefill``): every message ever
    routed, by ring position, handed to a lapped drain a few at a time."""

    def __init__(self, per_take: int) -> None:
        self.stream: list[bytes] = []
        self.per_take = per_take
        self.reading = False
        self.waiting = False

    def take(self, cursor: int, ring) -> Refilled:
        end = min(cursor + self.per_take, int(ring.tail))
        self.reading = end < ring.tail
        if end <= cursor:
            return Refilled(None, cursor, 0)
        return Refilled(parse_frames(self.stream[cursor:end]), end, 0)


def _send_all(feed: DrainFeed) -> bytes:
    sent = []
    while True:
        payload = feed.build_payload(
            _syslog, _l10, max_messages=5, max_bytes=1 << 20, encode_ring=_syslog_ring
        )
        if payload is None:
            return b"".join(sent)
        sent.append(payload.data)
        feed.delivered(payload)


@pytest.mark.parametrize("written", [True, False])
def test_a_partial_write_with_a_refill_copies_nothing_and_is_sent_again_if_it_fails(written):
    """Redis mode (a refill): a payload not written whole is not copied out of the ring.
    Written to its end, nothing of it is sent again; failed, it is sent again from its first
    message, from the refill where the ring let it go meanwhile, and nothing is lost."""
    registry = Registry(history_messages=8, buffer_messages=8)
    channel = registry.ensure_channel("app")
    feed = DrainFeed(registry, "app", wall_clock=lambda: 0.0)
    refill = ListRefill(per_take=3)
    feed.refill_from(refill)
    frames = [message(k) for k in range(5)]
    refill.stream.extend(frames)
    append(channel, frames)
    payload = feed.build_payload(
        _syslog, _l10, max_messages=5, max_bytes=1 << 20, encode_ring=_syslog_ring
    )
    assert payload is not None and payload.messages == 5
    assert feed.keep_unsettled(payload) == 0
    assert feed.pending is None and payload.batch is None  # nothing copied
    assert feed.backlog == 5 and feed.has_data()  # still the drain's to deliver
    # The ring (8 deep) lets the five go while the rest of the write is finished.
    more = [message(k) for k in range(5, 20)]
    refill.stream.extend(more)
    append(channel, more)
    if written:
        feed.delivered(payload)
    rest = _send_all(feed)
    numbers = [int(n) for n in re.findall(rb"drain test message (\d+)\n", rest)]
    assert numbers == list(range(5 if written else 0, 20))
    assert feed.counters.lost == 0 and l10_total(rest) == 0
    assert feed.counters.delivered == 20 and not feed.has_data()


def _lapping_feed_with_a_disk(tmp_path):
    """Redis mode in small: a feed of channel "app" (a ring 8 deep) with a refill
    (``ListRefill``, 3 messages a take) and an ephemeral disk backlog; and ``route(first,
    last)``, which appends messages ``first`` to ``last - 1`` to both ring and "stream"."""
    registry = Registry(history_messages=8, buffer_messages=8)
    channel = registry.ensure_channel("app")
    store = BacklogStore(tmp_path / "backlog", ephemeral=True)
    store.open()
    feed = DrainFeed(registry, "app", wall_clock=lambda: 0.0)
    feed.attach_backlog(store.attach(1, "app"))
    refill = ListRefill(per_take=3)
    feed.refill_from(refill)

    def route(first: int, last: int) -> None:
        frames = [message(k) for k in range(first, last)]
        refill.stream.extend(frames)
        append(channel, frames)

    return store, feed, route


async def test_a_lapped_drain_with_an_ephemeral_backlog_spills_the_stream_then_the_ring(tmp_path):
    """Redis mode: a drain its ring lapped reads what the ring let go from the stream (the
    refill). Told to spill, it copies the rest of that to the disk, then the ring from where
    the stream reached it, then everything new; it reads the disk back, then the ring:
    every message once, in order. (Reading the stream used to store a ring position for the
    kill -9 ledger computed from a batch that never was in the ring: negative, and the
    struct packing it took the drain pump down.)"""
    store, feed, route = _lapping_feed_with_a_disk(tmp_path)
    from_ring: list[tuple[int, int, int]] = []
    from_stream: list[tuple[int, int, int]] = []
    feed.on_spilled.append(lambda *chunk: from_ring.append(chunk))
    feed.on_spilled_refill.append(lambda *chunk: from_stream.append(chunk))

    sent: list[bytes] = []

    def deliver() -> None:
        while payload := feed.build_payload(_syslog, _l10, max_messages=5, max_bytes=1 << 20):
            sent.append(payload.data)
            feed.delivered(payload)
            if len(sent) == 1 and feed.refilling:
                return  # one payload from the stream, then the receiver refuses

    route(0, 20)  # the ring (8 deep) holds 12..19: 0..11 only in the stream
    deliver()
    assert len(sent) == 1 and feed.refilling  # 0..2 delivered from the stream
    assert feed.spill(force=True) == 17  # 3..11 from the stream, then 12..19 from the ring
    assert not feed.refilling and feed.spilling
    assert from_stream == [(0, 0, 3), (0, 3, 3), (0, 6, 3)]
    assert from_ring == [(12, 9, 8)]
    route(20, 24)
    assert feed.spill() == 4  # once spilling, everything new goes to the disk
    await store.write_round()
    deliver()
    assert not feed.spilling
    route(24, 26)
    deliver()
    numbers = [int(n) for n in re.findall(rb"drain test message (\d+)\n", b"".join(sent))]
    assert numbers == list(range(26))
    assert feed.counters.lost == 0 and feed.counters.delivered == 26


@pytest.mark.parametrize("written", [True, False])
async def test_a_write_the_ring_let_go_goes_first_then_what_was_spilled_past_it(tmp_path, written):
    """Redis mode: a payload encoded in place whose write stalls (kept without a copy) and
    that the ring lets go while the receiver refuses: the spill goes on past it (the rest
    from the stream, then the ring). Finished, it is not sent again; failed, it is sent
    again whole (its bytes, before the disk), not read again after what the disk took."""
    store, feed, route = _lapping_feed_with_a_disk(tmp_path)

    route(0, 5)
    payload = feed.build_payload(
        _syslog, _l10, max_messages=5, max_bytes=1 << 20, encode_ring=_syslog_ring
    )
    assert payload is not None and payload.messages == 5
    assert feed.keep_unsettled(payload) == 0  # its write stalls part way
    route(5, 20)  # the ring (8) lets 0..11 go
    assert feed.spill(force=True) == 15  # 5..11 from the stream, 12..19 from the ring
    sent = []
    if written:
        feed.delivered(payload)
        sent.append(payload.data)
    again = feed.build_payload(_syslog, _l10, max_messages=5, max_bytes=1 << 20)
    if not written:
        assert again is payload and again.resent  # the same bytes, first
        assert feed.keep_unsettled(again) == 0  # partial again: still first
        again = feed.build_payload(_syslog, _l10, max_messages=5, max_bytes=1 << 20)
        assert again is payload
        feed.delivered(again)
        sent.append(again.data)
        again = feed.build_payload(_syslog, _l10, max_messages=5, max_bytes=1 << 20)
    assert again is None  # the rest is on the disk, once written
    await store.write_round()
    while payload := feed.build_payload(_syslog, _l10, max_messages=5, max_bytes=1 << 20):
        sent.append(payload.data)
        feed.delivered(payload)
    numbers = [int(n) for n in re.findall(rb"drain test message (\d+)\n", b"".join(sent))]
    assert numbers == list(range(20))
    assert feed.counters.lost == 0 and not feed.spilling


@settings(max_examples=200, deadline=None)
@given(rounds=ROUNDS, per_take=st.integers(1, 9))
def test_a_drain_with_a_refill_loses_nothing_its_ring_laps(rounds, per_take):
    """A ring of 8 lapping a drain, also under the pump's threaded writes (``lapped_ok``:
    the ring moves on while the payload is written): with a refill, what it let go is read
    again from there, and nothing is lost (an error or a partial write may send a message
    twice). Without one, the same rounds lose messages whenever the ring laps."""
    registry = Registry(history_messages=8, buffer_messages=8)
    channel = registry.ensure_channel("app")
    feed = DrainFeed(registry, "app", wall_clock=lambda: 0.0)
    refill = ListRefill(per_take)
    feed.refill_from(refill)
    sent, routed = [], 0
    for appended, outcome in [*rounds, *[(0, "whole")] * (40 * len(rounds) + 1)]:
        payload = feed.build_payload(
            _syslog, _l10, max_messages=5, max_bytes=1 << 20, encode_ring=_syslog_ring
        )
        frames = [message(routed + k) for k in range(appended)]
        if frames:  # routed while the payload is written (a threaded pump round)
            refill.stream.extend(frames)
            append(channel, frames)
        routed += appended
        if payload is None:
            continue
        if outcome != "whole" and feed.keep_unsettled(payload, lapped_ok=True):
            continue  # lapped meanwhile: the connection is given up, nothing was delivered
        if outcome == "error":
            continue
        sent.append(payload.data)
        feed.delivered(payload)
    out = b"".join(sent)
    assert feed.counters.lost == 0 and l10_total(out) == 0
    got = re.findall(rb"drain test message (\d+)", out)
    assert sorted({int(n) for n in got}) == list(range(routed))
    assert [int(n) for n in got] == sorted(int(n) for n in got)  # in order
