"""Routing in batches: token lookup, APP-NAME rewrite, token-auth semantics."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logplexd.native import (
    ChannelRing,
    TokenTable,
    dispatch,
    dispatch_to,
    dispatch_to_until_held,
    dispatch_until_held,
    parse_frames,
)


def msg(app: bytes, text: bytes = b"hello") -> bytes:
    return b"<134>1 2012-12-10T03:00:48Z host " + app + b' web.1 - [a b="c"] ' + text


def test_dispatch_routes_by_app_name_and_rewrites_only_that_field():
    a, b = ChannelRing(), ChannelRing()
    table = TokenTable()
    table.add(b"t.aaa", a, b"app")
    table.add(b"t.bbb", b, b"heroku-router")
    batch = parse_frames(
        [
            msg(b"t.aaa", b"mentions t.aaa"),
            msg(b"t.bbb"),
            msg(b"t.zzz"),
            b"garbage",
            msg(b"t.aaa", b"two"),
        ]
    )
    routed, unknown, touched = dispatch(batch, table)
    assert (routed, unknown) == (3, 2)
    assert touched == [a, b]
    assert a.last(5).frames() == [msg(b"app", b"mentions t.aaa"), msg(b"app", b"two")]
    assert b.last(5).frames() == [msg(b"heroku-router")]
    fields = a.last(1).fields(0)
    assert fields["app"] == b"app" and fields["sd"] == b'[a b="c"]' and fields["msg"] == b"two"


def test_dispatch_until_held_stops_before_a_ring_at_its_hold_mark():
    a, b = ChannelRing(), ChannelRing()
    table = TokenTable()
    table.add(b"t.aaa", a, b"app")
    table.add(b"t.bbb", b, b"app")
    a.wake_at = b.wake_at = 2**64 - 1  # nobody waits: only the stop wakes
    batch = parse_frames([msg(b"t.aaa", b"%d" % i) if i % 2 else msg(b"t.bbb") for i in range(8)])
    assert a.hold_at == 2**64 - 1  # by default never
    a.hold_at = 2
    routed, unknown, wake, stop = dispatch_until_held(batch, table)
    # b's frames 0, 2, 4 and a's 1, 3 went in; then a's head had reached 2: frame 5 waits.
    assert (routed, unknown, stop) == (5, 0, 5)
    assert wake == [a]
    assert [f[-1:] for f in a.last(9).frames()] == [b"1", b"3"]
    assert len(b) == 3
    a.hold_at = 0  # held: nothing more for a, and nothing after it
    routed, unknown, wake, stop = dispatch_until_held(batch, table, None, 5)
    assert (routed, stop, wake) == (0, 5, [a])
    a.hold_at = 2**64 - 1
    routed, unknown, wake, stop = dispatch_until_held(batch, table, None, 5)
    assert (routed, stop) == (3, -1) and len(a) == 4 and len(b) == 4
    # Plain dispatch ignores hold marks; both take a start.
    a.hold_at = 0
    assert dispatch(batch, table, None, 7)[:2] == (1, 0) and len(a) == 5


def test_invalid_frame_with_a_token_is_still_routed():
    ring = ChannelRing()
    table = TokenTable()
    table.add(b"t.aaa", ring, b"app")
    raw = b"<134>1 2012-12-10T04:05:25Z+00:00 erlang t.aaa console.1 - Logsplat"
    assert dispatch(parse_frames([raw]), table)[:2] == (1, 0)
    assert ring.last(1).frames() == [raw.replace(b"t.aaa", b"app")]


def test_dispatch_to_keeps_foreign_app_names_and_renames_siblings():
    mine, other = ChannelRing(), ChannelRing()
    table = TokenTable()
    table.add(b"t.web", mine, b"web")
    table.add(b"t.worker", mine, b"worker")
    table.add(b"t.other", other, b"app")
    batch = parse_frames([msg(b"t.web"), msg(b"t.worker"), msg(b"t.other"), msg(b"myapp")])
    assert dispatch_to(batch, table, mine) == 4
    assert mine.last(9).frames() == [msg(b"web"), msg(b"worker"), msg(b"t.other"), msg(b"myapp")]
    assert len(other) == 0


def test_dispatch_to_until_held_stops_at_the_mark_and_goes_on_from_there():
    mine = ChannelRing()
    table = TokenTable()
    table.add(b"t.web", mine, b"web")
    frames = [msg(b"t.web", b"m%d" % i) for i in range(6)]
    batch = parse_frames(frames)
    mine.hold_at = 2
    assert dispatch_to_until_held(batch, table, mine) == (2, 2)
    assert dispatch_to_until_held(batch, table, mine, None, False, 2) == (0, 2)  # still held
    mine.hold_at = 5
    assert dispatch_to_until_held(batch, table, mine, None, False, 2) == (3, 5)
    assert dispatch_to(batch, table, mine, None, False, 5) == 1  # the rest, whole
    assert mine.last(9).frames() == [f.replace(b"t.web", b"web") for f in frames]
    mine.hold_at = 2**64 - 1
    assert dispatch_to_until_held(batch, table, mine) == (6, -1)
    for bad in (-1, 7):
        with pytest.raises(ValueError, match="start out of range"):
            dispatch_to_until_held(batch, table, mine, None, False, bad)


def test_table_add_replace_remove_and_many_tokens():
    rings = [ChannelRing() for _ in range(3)]
    table = TokenTable()
    tokens = [b"t.%032d" % i for i in range(5000)]
    for i, token in enumerate(tokens):
        table.add(token, rings[i % 3], b"n%d" % i)
    assert len(table) == 5000
    for i in range(0, 5000, 2):
        assert table.remove(tokens[i])
    assert not table.remove(tokens[0])
    assert len(table) == 2500
    for i, token in enumerate(tokens):
        found = table.lookup(token)
        if i % 2:
            assert found == (rings[i % 3], b"n%d" % i)
        else:
            assert found is None
    table.add(tokens[1], rings[0], b"renamed")
    assert table.lookup(tokens[1]) == (rings[0], b"renamed")


def test_dispatch_wakes_a_ring_only_once_its_head_reaches_wake_at():
    never, always, later = ChannelRing(), ChannelRing(), ChannelRing()
    never.wake_at = 2**64 - 1
    later.wake_at = 3
    table = TokenTable()
    for token, ring in ((b"t.n", never), (b"t.a", always), (b"t.l", later)):
        table.add(token, ring, b"app")
    frames = [msg(b"t.n"), msg(b"t.a"), msg(b"t.l"), msg(b"t.l")]
    routed, _unknown, wake = dispatch(parse_frames(frames), table)
    assert routed == 4 and wake == [always]  # `later` holds 2 of the 3 it waits for
    routed, _unknown, wake = dispatch(parse_frames(frames), table)
    assert wake == [always, later]  # head 4 >= 3
    assert len(never) == 2  # appended all the same, only never woken


def test_dispatch_lists_a_ring_once_in_the_order_rings_became_due():
    # A ring is listed when an append makes it due, not when it is first touched: `b` is
    # touched first but due only at its second message, after `a` became due.
    a, b, c = ChannelRing(), ChannelRing(), ChannelRing()
    b.wake_at = 2
    c.wake_at = 2**64 - 1
    table = TokenTable()
    for token, ring in ((b"t.a", a), (b"t.b", b), (b"t.c", c)):
        table.add(token, ring, b"app")
    frames = [msg(b"t.b"), msg(b"t.c"), msg(b"t.a"), msg(b"t.b"), msg(b"t.a"), msg(b"t.b")]
    routed, _unknown, wake = dispatch(parse_frames(frames), table)
    assert routed == 6 and wake == [a, b]
    assert (len(a), len(b), len(c)) == (2, 3, 1)
    # Stopped at a held ring: listed once, whether it was due before or not.
    b.hold_at = 4
    routed, _unknown, wake, stop = dispatch_until_held(parse_frames(frames), table)
    assert (routed, stop) == (3, 3) and wake == [b, a]
    assert (len(a), len(b), len(c)) == (3, 4, 2)


def test_registry_wakes_only_channels_with_waiters():
    import trio
    import trio.testing

    from logplexd.router.registry import Registry

    async def main():
        registry = Registry()
        quiet, tailed = registry.ensure_channel("quiet"), registry.ensure_channel("tailed")
        registry.add_token("quiet", "t.q", "app")
        registry.add_token("tailed", "t.t", "app")
        woken = []
        async with trio.open_nursery() as nursery:

            async def tail():
                await tailed.wait_appended()
                woken.append("tailed")

            nursery.start_soon(tail)
            await trio.testing.wait_all_tasks_blocked()
            assert quiet.ring.wake_at == 2**64 - 1 and tailed.ring.wake_at == 0
            registry.route(parse_frames([msg(b"t.q"), msg(b"t.t")]))
            await trio.testing.wait_all_tasks_blocked()
        assert woken == ["tailed"]
        # The waiter is gone: the ring stops asking to be woken.
        assert tailed.ring.wake_at == 2**64 - 1
        assert len(quiet.ring) == 1 and len(tailed.ring) == 1

    trio.run(main)


# -- the firehose (REFERENCE.md section 7) ------------------------------------------------------


def test_dispatch_copies_firehose_tokens_raw_in_turn():
    from logplexd.native import Firehose

    app, quiet = ChannelRing(), ChannelRing()
    hoses = [ChannelRing() for _ in range(3)]
    table = TokenTable()
    table.add(b"t.heroku", app, b"heroku", True)
    table.add(b"t.app", app, b"app")
    table.add(b"t.quiet", quiet, b"app")
    assert table.firehosed(b"t.heroku") and not table.firehosed(b"t.app")
    assert not table.firehosed(b"t.unknown")
    firehose = Firehose(hoses)
    frames = [msg(b"t.heroku", b"h%d" % i) for i in range(7)]
    frames += [msg(b"t.app"), msg(b"t.quiet"), msg(b"t.none")]
    routed, unknown, touched = dispatch(parse_frames(frames), table, firehose)
    assert (routed, unknown) == (9, 1)
    # Its own channel has every frame, cooked; each frame is in exactly one hose, raw.
    assert app.last(99).frames() == [msg(b"heroku", b"h%d" % i) for i in range(7)] + [msg(b"app")]
    assert [ring.last(9).frames() for ring in hoses] == [
        [msg(b"t.heroku", b"h0"), msg(b"t.heroku", b"h3"), msg(b"t.heroku", b"h6")],
        [msg(b"t.heroku", b"h1"), msg(b"t.heroku", b"h4")],
        [msg(b"t.heroku", b"h2"), msg(b"t.heroku", b"h5")],
    ]
    assert touched == [app, *hoses, quiet]
    assert firehose.posted() == [3, 2, 2] and firehose.total == 7 and len(firehose) == 3
    assert firehose.rings == tuple(hoses)
    # The turn goes on from where it was; without a firehose nothing is copied.
    dispatch(parse_frames([msg(b"t.heroku")]), table, firehose)
    assert firehose.posted() == [3, 3, 2]
    dispatch(parse_frames([msg(b"t.heroku")]), table)
    dispatch(parse_frames([msg(b"t.heroku")]), table, Firehose())
    assert firehose.total == 8 and sum(len(ring) for ring in hoses) == 8


def test_a_firehose_never_feeds_a_channel_its_own_messages():
    from logplexd.native import Firehose

    hose, other = ChannelRing(), ChannelRing()
    table = TokenTable()
    table.add(b"t.h", hose, b"heroku", True)  # flagged by mistake: still no loop
    firehose = Firehose([hose, other])
    dispatch(parse_frames([msg(b"t.h", b"%d" % i) for i in range(4)]), table, firehose)
    assert len(hose) == 4 and other.last(9).frames() == [msg(b"t.h", b"1"), msg(b"t.h", b"3")]
    assert firehose.posted() == [0, 2]


def test_dispatch_to_copies_by_sibling_token_else_by_the_authenticating_one():
    from logplexd.native import Firehose

    mine, hose = ChannelRing(), ChannelRing()
    table = TokenTable()
    table.add(b"t.web", mine, b"web")
    table.add(b"t.heroku", mine, b"heroku", True)
    firehose = Firehose([hose])
    batch = parse_frames([msg(b"t.web"), msg(b"t.heroku"), msg(b"foreign")])
    assert dispatch_to(batch, table, mine, firehose, False) == 3
    assert hose.last(9).frames() == [msg(b"t.heroku")]
    assert dispatch_to(batch, table, mine, firehose, True) == 3
    assert hose.last(9).frames()[1:] == [msg(b"t.heroku"), msg(b"foreign")]
    assert firehose.total == 3 and len(mine) == 6


def test_registry_firehose_follows_channels_tokens_and_settings():
    import trio
    import trio.testing

    from logplexd.router.registry import Registry

    async def main():
        registry = Registry()
        registry.set_firehose(["hose-a", "hose-b", "hose-c"], ["heroku"])
        registry.add_token("app", "t.heroku", "heroku")
        registry.add_token("app", "t.app", "app")
        registry.add_token("hose-a", "t.hose", "heroku")  # a firehose's own: never copied
        assert registry.firehose is not None and len(registry.firehose) == 1
        registry.ensure_channel("hose-b")  # joins at once; hose-c does not exist
        assert registry.table.firehosed(b"t.heroku")
        assert not registry.table.firehosed(b"t.app") and not registry.table.firehosed(b"t.hose")
        a, b = registry.channel("hose-a"), registry.channel("hose-b")
        assert a is not None and b is not None
        woken = []
        async with trio.open_nursery() as nursery:

            async def tail():
                await b.wait_appended()
                woken.append("hose-b")

            nursery.start_soon(tail)
            await trio.testing.wait_all_tasks_blocked()
            frames = [msg(b"t.heroku", b"%d" % i) for i in range(4)]
            counts = registry.route(parse_frames([*frames, msg(b"t.app"), msg(b"t.hose")]))
            await trio.testing.wait_all_tasks_blocked()
        assert counts.routed == 6 and woken == ["hose-b"]
        assert len(a.ring) == 3 and len(b.ring) == 2  # hose-a's own line, and 2 copies each
        assert registry.firehose_posted() == {"hose-a": 2, "hose-b": 2, "hose-c": 0}
        # Token auth: the authenticating token decides for a frame naming no sibling.
        app = registry.channel("app")
        assert app is not None
        registry.route_to(parse_frames([msg(b"anything")]), app, "t.heroku")
        registry.route_to(parse_frames([msg(b"anything")]), app, "t.app")
        assert registry.firehose_posted() == {"hose-a": 3, "hose-b": 2, "hose-c": 0}
        # Counts survive the firehose channels changing; a dropped channel gets nothing.
        registry.drop_channel("hose-a")
        registry.route(parse_frames(frames))
        assert registry.firehose_posted() == {"hose-a": 3, "hose-b": 6, "hose-c": 0}
        # Reconfigured (SIGHUP): flags follow; empty settings switch it off.
        registry.set_firehose(["hose-b"], ["app"])
        assert registry.table.firehosed(b"t.app") and not registry.table.firehosed(b"t.heroku")
        registry.set_firehose([], [])
        assert registry.firehose is None and not registry.table.firehosed(b"t.app")
        registry.route(parse_frames([msg(b"t.app")]))
        assert registry.firehose_posted() == {"hose-a": 3, "hose-b": 6}

    trio.run(main)


def test_firehose_property_copies_exactly_the_filtered_frames_evenly():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from logplexd.native import Firehose

    tokens = [(b"t.h1", 0, True), (b"t.h2", 1, True), (b"t.a", 0, False), (b"t.b", 1, False)]

    @settings(max_examples=100, deadline=None)
    @given(
        picks=st.lists(st.lists(st.integers(0, 4), max_size=40), max_size=5),
        hoses=st.integers(1, 4),
    )
    def check(picks: list[list[int]], hoses: int) -> None:
        plain_rings, rings = [ChannelRing(), ChannelRing()], [ChannelRing(), ChannelRing()]
        plain, table = TokenTable(), TokenTable()
        for token, ring, flagged in tokens:
            plain.add(token, plain_rings[ring], b"n")
            table.add(token, rings[ring], b"n", flagged)
        firehose = Firehose([ChannelRing() for _ in range(hoses)])
        expected = []
        serial = 0
        for batch_picks in picks:
            frames = []
            for pick in batch_picks:
                token = tokens[pick][0] if pick < len(tokens) else b"t.unknown"
                frames.append(msg(token, b"%d" % serial))
                if pick < len(tokens) and tokens[pick][2]:
                    expected.append(frames[-1])
                serial += 1
            assert (
                dispatch(parse_frames(frames), table, firehose)[:2]
                == dispatch(parse_frames(frames), plain)[:2]
            )
        # Routing itself is unchanged; every filtered frame is in exactly one hose, raw,
        # each hose in order, and the hoses' counts differ by at most one.
        assert [r.last(999).frames() for r in rings] == [r.last(999).frames() for r in plain_rings]
        copies = [ring.last(999).frames() for ring in firehose.rings]
        assert sorted(f for hose in copies for f in hose) == sorted(expected)
        for hose in copies:
            assert hose == [f for f in expected if f in hose]
        assert max(map(len, copies)) - min(map(len, copies)) <= 1
        assert firehose.posted() == list(map(len, copies)) and firehose.total == len(expected)

    check()


# Tokens of every length a table takes (1..64 bytes), and APP-NAMEs no token has: one too
# long to be a token (65 bytes), one unknown, and the NILVALUE.
_TOKENS = [b"t", b"t.1234567", b"t.%034d" % 7, b"t." + b"x" * 62]
_STRANGERS = [b"t." + b"x" * 63, b"t.unknown", b"-"]


@settings(max_examples=60, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(_TOKENS) + len(_STRANGERS) - 1), max_size=300),
    start=st.integers(0, 10),
)
def test_dispatch_matches_a_model_of_one_look_up_per_frame(picks: list[int], start: int) -> None:
    # The look-ups run in passes ahead of the appends (hashes, then entries): whatever the
    # batch, each frame from ``start`` on lands in its token's ring, in order, exactly once.
    rings = [ChannelRing(4096) for _ in _TOKENS]
    table = TokenTable()
    for i, (token, ring) in enumerate(zip(_TOKENS, rings, strict=True)):
        table.add(token, ring, b"n%d" % i)
    names = _TOKENS + _STRANGERS
    batch = parse_frames([msg(names[p], b"m%d" % k) for k, p in enumerate(picks)])
    start = min(start, len(picks))
    routed, unknown, _ = dispatch(batch, table, None, start)
    expected: list[list[bytes]] = [[] for _ in rings]
    for k, p in enumerate(picks[start:], start):
        if p < len(_TOKENS):
            expected[p].append(msg(b"n%d" % p, b"m%d" % k))
    assert routed == sum(map(len, expected))
    assert unknown == len(picks) - start - routed
    assert [ring.last(4096).frames() for ring in rings] == expected
