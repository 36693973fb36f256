"""Syslog drains over TCP (``syslog://``) and TLS (``syslog+tls://``): REFERENCE §5.3, §5.4.

Frames are octet-counted (RFC 6587) and written many per ``send_all``. Delivery guarantee:
a write that completes counts as delivered (TCP gives no receipt, as in the original); a
write that fails or times out is kept and written again, whole, on the next connection, so a
dying connection loses nothing the drain still holds (a receiver may see that write twice).
"""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING

import trio

from ..native import Batch, ChannelRing, l10_syslog, syslog_frames, syslog_frames_from_ring
from ..router import high_water, pushback_for
from .delivery import DrainHandle
from .policy import TRANSPORT_ERRORS, syslog_failures_after_drop, syslog_reconnect_backoff
from .pump import AttachedWriter, check_hold
from .state import DrainEvent
from .transport import open_drain_stream

if TYPE_CHECKING:
    from ..router import Channel


class PeerClosed(EOFError):
    """The receiver closed the connection (syslog receivers never send anything)."""


class SyslogDrain:
    def __init__(self, drain: DrainHandle) -> None:
        self.drain = drain
        self.token = drain.token.encode()

    def _encode(self, batch: Batch, start: int, max_bytes: int) -> tuple[bytes, int, int]:
        return syslog_frames(batch, self.token, start, max_bytes)

    def _encode_ring(
        self, ring: ChannelRing, cursor: int, max_messages: int, max_bytes: int
    ) -> tuple[bytes, int, int, int]:
        return syslog_frames_from_ring(ring, cursor, max_messages, self.token, max_bytes)

    def _loss_notice(self, n: int, since: float, now: float) -> bytes:
        return l10_syslog(self.token, n, since, now)

    async def run(self) -> None:
        """Deliver until cancelled; returns once a flush (shutdown) has nothing left."""
        drain, feed, settings = self.drain, self.drain.feed, self.drain.settings
        failures = 0
        while True:
            # Connect only when there is something to send: an idle drain holds no socket.
            if not await self._wait_for_data(guard=failures == 0):
                return
            delay = syslog_reconnect_backoff(failures, drain.rng, cap=settings.syslog_backoff_cap)
            if delay:
                await trio.sleep(delay)
            drain.on(DrainEvent.CONNECT)
            try:
                stream = await self._connect(hold=failures == 0)
            except TRANSPORT_ERRORS as exc:
                failures += 1
                drain.fail(exc, connecting=True)
                continue
            drain.on(DrainEvent.CONNECTED)
            connected_at = trio.current_time()
            delivered_before = feed.counters.delivered
            try:
                await self._pump(stream)
                return
            except TRANSPORT_ERRORS as exc:
                # A connection that stayed up a while or took a write was good: reconnect
                # soon. One that dies right after connecting must not make us reconnect in a
                # tight loop.
                lived = trio.current_time() - connected_at
                failures = syslog_failures_after_drop(
                    failures, lived=lived, delivered=feed.counters.delivered > delivered_before
                )
                drain.fail(exc)
            finally:
                await trio.aclose_forcefully(stream)

    async def _wait_for_data(self, *, guard: bool) -> bool:
        """``feed.wait_for_data``; with ``guard``, a flood that arrives before this task
        has run holds the inputs at the drain's high-water mark (the router applies it
        with the very message that reaches it), so the connection that follows, which
        holds for at most ``slow_write_after``, has a ring that has not lapped it."""
        feed = self.drain.feed
        channel = self._mark_channel() if guard else None
        if channel is None:
            return await feed.wait_for_data()
        try:
            ready = await feed.wait_for_data()
        except BaseException:
            channel.release(self)
            raise
        if not ready:
            channel.release(self)
        # Otherwise kept past the wait on purpose: ``_connect`` takes it over and releases
        # it once connected (or after ``slow_write_after``).
        return ready

    def _mark_channel(self) -> Channel | None:
        """Hold this drain's channel from its high-water mark past its cursor (pending:
        the router applies it with the message that reaches it), when the channel pushes
        back; returns the channel, or None when nothing was marked."""
        drain = self.drain
        channel = drain.feed.current_channel()
        if channel is None or drain.pump is None or not pushback_for(channel, drain.pump.pushback):
            return None
        cursor = max(drain.feed.cursor, channel.ring.tail)
        channel.hold_from(self, cursor + high_water(channel.ring))
        return channel

    async def _connect(self, *, hold: bool) -> trio.abc.Stream:
        """Open the connection. A drain that was delivering holds its channel's inputs while
        it connects, for at most ``slow_write_after``: a receiver that answers at once will
        take what arrives meanwhile; one that does not is slow and holds nothing."""
        drain, settings = self.drain, self.drain.settings
        connect = partial(
            open_drain_stream,
            drain.target,
            drain.tls,
            connect_timeout=settings.syslog_connect_timeout,
        )
        channel = self._mark_channel() if hold else None
        if channel is None:
            return await connect()
        # Messages arriving meanwhile wait in the ring; only a flood big enough to lap it
        # holds the inputs.
        try:
            with trio.move_on_after(settings.slow_write_after):
                return await connect()
        finally:
            channel.release(self)
        return await connect()  # slow to answer: connect without holding anyone

    async def _pump(self, stream: trio.abc.Stream) -> None:
        peer_error: list[BaseException] = []
        write_error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_peer, stream, nursery.cancel_scope, peer_error)
            try:
                await self._write_loop(stream)
            except TRANSPORT_ERRORS as exc:
                write_error = exc
            nursery.cancel_scope.cancel()
        # Errors leave the nursery by hand: strict exception groups would wrap them.
        if write_error is not None:
            raise write_error
        if peer_error:
            raise peer_error[0]

    async def _write_loop(self, stream: trio.abc.Stream) -> None:
        drain, feed, settings = self.drain, self.drain.feed, self.drain.settings
        writer = None
        if drain.pump is not None and isinstance(stream, trio.SocketStream):
            writer = AttachedWriter(
                feed,
                stream.socket.fileno(),
                self._encode,
                self._loss_notice,
                drain.on,
                max_messages=settings.read_max_messages,
                max_bytes=settings.syslog_batch_bytes,
                encode_ring=self._encode_ring,
            )
        try:
            await self._write_loop_body(stream, writer)
        finally:
            if writer is not None:
                for channel in (writer.channel, feed.channel):
                    if channel is not None:
                        channel.release(writer)

    async def _write_loop_body(
        self, stream: trio.abc.Stream, writer: AttachedWriter | None
    ) -> None:
        drain, feed, settings = self.drain, self.drain.feed, self.drain.settings
        while True:
            channel = feed.current_channel()
            if (
                writer is not None
                and channel is not None
                and channel.ring.owner is not None
                and not feed.flushing
                and feed.cached is None
                and feed.pending_messages == 0
                # Reading back from disk, or a notice to send alone: the pump only hears
                # of the ring's appends.
                and not feed.spilling
                and not feed.owes_notice
            ):
                await self._parked(writer, channel, stream)
                continue
            if writer is not None and channel is not None and feed.spilling:
                # Its backlog is on disk: the ring cannot lap it, nothing to hold for.
                channel.release(writer)
            elif writer is not None and channel is not None and drain.pump is not None:
                # Its own task writes (the rest of a batch, a flush): it holds as the pump
                # would, by its backlog, until the receiver proves slow (or, for a channel
                # that does not push back, releases).
                high = high_water(channel.ring)
                check_hold(writer, channel, high, drain.pump.pushback)
                if not writer.slow and pushback_for(channel, drain.pump.pushback):
                    # Not attached to the pump, nobody looks at its backlog on each route:
                    # the router holds the channel by itself should a flood reach the mark.
                    cursor = max(feed.cursor, channel.ring.tail)
                    channel.hold_from(writer, cursor + high)
            if not await feed.wait_for_data(settings.linger, settings.linger_messages):
                return
            payload = feed.build_payload(
                self._encode,
                self._loss_notice,
                max_messages=settings.read_max_messages,
                max_bytes=settings.syslog_batch_bytes,
            )
            if payload is None:
                continue
            drain.on(DrainEvent.SEND)
            with trio.fail_after(settings.syslog_send_timeout):
                if writer is not None and channel is not None:
                    await self._finish_write(writer, channel, memoryview(payload.data))
                else:
                    await stream.send_all(payload.data)
            feed.delivered(payload)
            drain.on(DrainEvent.SENT)

    async def _parked(
        self, writer: AttachedWriter, channel: Channel, stream: trio.abc.Stream
    ) -> None:
        """The pump writes until it hands back; finish what it could not."""
        writer.wake = trio.Event()
        writer.partial = writer.error = None
        pump = self.drain.pump
        assert pump is not None
        await pump.park(writer, channel)
        if writer.error is not None:
            raise trio.BrokenResourceError("write failed") from writer.error
        if writer.partial is not None:
            payload, written = writer.partial
            writer.partial = None
            settings = self.drain.settings
            try:
                with trio.fail_after(settings.syslog_send_timeout):
                    await self._finish_write(writer, channel, memoryview(payload.data)[written:])
            except BaseException:
                channel.release(writer)
                raise
            self.drain.feed.delivered(payload)
            self.drain.on(DrainEvent.SENT)

    async def _finish_write(
        self, writer: AttachedWriter, channel: Channel, rest: memoryview
    ) -> None:
        """Write ``rest`` (what the pump could not, or a batch of the drain's own task) as
        the socket takes it.

        A receiver that keeps taking it is keeping up, and a hold of the channel stays. One
        that takes nothing for ``slow_write_after``, or has not taken the whole write after
        ``slow_write_whole_after``, refuses data: it is slow, holds nothing until it has
        caught up, and is lapped (L10) if it stays behind. (A busy receiver on a loaded
        machine still makes progress; a stalled one makes none.)
        """
        settings = self.drain.settings
        patience = settings.slow_write_after
        now = trio.current_time()
        give_up_at = now + settings.slow_write_whole_after
        slow_at = min(now + patience, give_up_at)
        while rest:
            try:
                taken = os.write(writer.fd, rest)
            except BlockingIOError:
                taken = 0
            except OSError as exc:
                raise trio.BrokenResourceError("write failed") from exc
            rest = rest[taken:]
            if not rest:
                # As send_all would: a drain that always has data still lets others run.
                await trio.lowlevel.checkpoint()
                return
            now = trio.current_time()
            if taken:
                slow_at = min(now + patience, give_up_at)
            if now >= slow_at and not writer.slow:
                writer.judge(True)
                self.drain.feed.counters.judged_slow += 1
                channel.release(writer)
            if writer.slow:
                await trio.lowlevel.wait_writable(writer.fd)
            else:
                with trio.move_on_at(slow_at):
                    await trio.lowlevel.wait_writable(writer.fd)

    @staticmethod
    async def _watch_peer(
        stream: trio.abc.Stream, scope: trio.CancelScope, error: list[BaseException]
    ) -> None:
        """Notice a closed connection while idle, instead of on the next write."""
        try:
            if isinstance(stream, trio.SocketStream):
                # A receiver seldom sends: wait before the first read, which would
                # otherwise fail (and raise inside trio) on every connection.
                await trio.lowlevel.wait_readable(stream.socket)
            while await stream.receive_some(65536):
                pass
            error.append(PeerClosed("connection closed by the receiver"))
        except TRANSPORT_ERRORS as exc:
            error.append(exc)
        scope.cancel()
