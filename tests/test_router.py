"""Routing in batches: token lookup, APP-NAME rewrite, token-auth semantics."""

from logplexd.native import ChannelRing, TokenTable, dispatch, dispatch_to, parse_frames


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
