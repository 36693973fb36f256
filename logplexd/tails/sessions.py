"""Log sessions (``GET /sessions/{uuid}``) and channel logs, on top of ``ChannelRing``.

A session first sends the newest ``num`` matching lines of history, then (``tail``) follows
the channel through its own ring cursor. The cursor lives in the ring's sequence space, so
a reader that stops reading holds nothing: it is lapped, and when it reads again it gets
the L11 notice with the exact count it lost. Per-session memory is one read batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import trio

from ..native import Batch, channel_log_frames, l11_line, session_lines
from ..router import Channel, Registry
from ..web import DirectSink
from .pump import (
    TAIL_LINGER_MESSAGES,
    TAIL_LINGER_SECONDS,
    TAIL_READ_BYTES,
    TAIL_READ_MESSAGES,
    PumpedTail,
    TailPump,
)
from .pushback import TailHolds
from .sse import KEEPALIVE, sse_event

DEFAULT_NUM = 100
MAX_NUM = 1500


class SessionParamError(ValueError):
    pass


@dataclass(frozen=True)
class SessionParams:
    channel: str
    num: int = DEFAULT_NUM
    tail: bool = False
    ps: bytes | None = None
    source: bytes | None = None
    # Seconds a tail follows the channel once connected, then ends cleanly; None: until the
    # client goes away (Logplex's own sessions). Platform log-sessions carry a limit.
    max_duration: float | None = None


# The stored session body key holding ``max_duration``; the v2/v3 session routes keep only
# the Logplex keys of a client's body, so only the daemon itself sets it.
MAX_DURATION_KEY = "max_duration"


def parse_session_params(body: Mapping[str, object]) -> SessionParams:
    """Decode a stored session body (the JSON object POSTed to create the session).

    ``num`` may be a string or a number (clamped to 0..1500); the session tails when
    ``tail`` is present and neither false nor null.
    """
    channel = body.get("channel_id")
    if isinstance(channel, int) and not isinstance(channel, bool):
        channel = str(channel)
    if not isinstance(channel, str) or not channel:
        raise SessionParamError("'channel_id' missing")
    num_raw = body.get("num", DEFAULT_NUM)
    try:
        if isinstance(num_raw, bool):
            raise ValueError
        num = int(num_raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        num = DEFAULT_NUM
    num = max(0, min(MAX_NUM, num))
    tail_raw = body.get("tail", None)
    tail = "tail" in body and tail_raw is not False and tail_raw is not None
    max_raw = body.get(MAX_DURATION_KEY)
    max_duration = None
    if isinstance(max_raw, int | float) and not isinstance(max_raw, bool) and max_raw > 0:
        max_duration = float(max_raw)
    return SessionParams(
        channel=channel,
        num=num,
        tail=tail,
        ps=_opt_bytes(body.get("ps")),
        source=_opt_bytes(body.get("source")),
        max_duration=max_duration,
    )


def _opt_bytes(value: object) -> bytes | None:
    if value is None or value == "":
        return None
    return str(value).encode()


async def stream_session(
    registry: Registry,
    channel: Channel,
    params: SessionParams,
    *,
    wall_clock: Callable[[], float] = time.time,
    start: tuple[Batch, int] | None = None,
    events: bool = False,
    keepalive: float | None = None,
    holds: TailHolds | None = None,
    pump: TailPump | None = None,
    sink: DirectSink | None = None,
) -> AsyncIterator[bytes]:
    """Yield the session's body in chunks: history first, then (tail) new lines as they come.

    Reading the ring and encoding are native batch calls; between two yields the consumer
    (the HTTP writer) may take as long as it likes without holding anything back.
    ``start`` (Redis mode) gives the history and the ring position the tail continues from,
    read from the channel's stream by ``cluster.reads``. A tail with ``max_duration`` ends
    (the generator returns, so the chunked body finishes) that long after it started.
    With ``events`` the lines are server-sent events (``sse.py``), and a tail that has sent
    nothing for ``keepalive`` seconds sends the ``KEEPALIVE`` comment. With ``holds`` a
    tail that falls behind while its reader takes what it is sent holds the channel's
    inputs instead of being lapped (``pushback.py``). With a ``pump`` and the server's
    ``sink`` (a plain TCP connection) the live lines are written by the pump
    (``pump.py``), not by this generator.
    """
    deadline = math.inf
    if params.max_duration is not None:
        deadline = trio.current_time() + params.max_duration
    ring = channel.ring
    if start is None:
        source, cursor = registry.history(channel), ring.head
    else:
        source, cursor = start
    history, count = session_lines(source, params.ps, params.source, params.num, sse=events)
    if count:
        yield history
    if not params.tail:
        return
    hold = holds.open(channel) if holds is not None else None
    try:
        if pump is not None and sink is not None:
            tail = PumpedTail(
                channel,
                cursor,
                sink,
                ps=params.ps,
                source=params.source,
                events=events,
                hold=hold,
                last_read_at=wall_clock(),
            )
            while True:
                wake = deadline if keepalive is None else min(deadline, tail.sent_at + keepalive)
                with trio.move_on_at(wake):
                    await pump.park(tail)
                if tail.partial is not None:
                    # The socket took part of a chunk: the rest under the send timeout; a
                    # reader that does not take it within ``slow_after`` is slow.
                    rest, tail.partial = tail.partial, None
                    if holds is not None and hold is not None:
                        holds.sending(hold, tail.cursor)
                    await sink.send_framed(rest)
                    if holds is not None and hold is not None:
                        holds.sent(hold)
                    tail.sent_at = trio.current_time()
                    continue
                if tail.error is not None:
                    raise trio.BrokenResourceError("tail: client gone") from tail.error
                if tail.removed or registry.channel(params.channel) is not channel:
                    return  # channel deleted: the tail ends, everything written
                at = trio.current_time()
                if at >= deadline:
                    return
                if keepalive is not None and at >= tail.sent_at + keepalive:
                    yield KEEPALIVE
                    tail.sent_at = trio.current_time()
        last_read_at = wall_clock()
        # When the tail last sent something: an idle one sends KEEPALIVE ``keepalive`` after.
        sent_at = trio.current_time()
        while True:
            at = trio.current_time()
            if at >= deadline:
                return  # the tail's time is up (busy or idle): end cleanly
            if keepalive is not None and at >= sent_at + keepalive:
                yield KEEPALIVE
                sent_at = trio.current_time()
            if holds is not None and hold is not None:
                holds.reading(hold, ring.head - cursor)
            batch, cursor, lost = ring.read(cursor, TAIL_READ_MESSAGES, TAIL_READ_BYTES)
            now = wall_clock()
            if lost:
                notice = l11_line(lost, last_read_at, now)
                yield sse_event(notice) if events else notice
                sent_at = trio.current_time()
            last_read_at = now
            if len(batch):
                lines, count = session_lines(batch, params.ps, params.source, sse=events)
                if count:
                    if holds is not None and hold is not None:
                        holds.sending(hold, cursor)
                        yield lines
                        holds.sent(hold)
                    else:
                        yield lines
                    sent_at = trio.current_time()
                continue
            if registry.channel(params.channel) is not channel:
                return  # channel deleted (or replaced): the tail ends once it has sent the rest
            wake = deadline if keepalive is None else min(deadline, sent_at + keepalive)
            linger_to = cursor + TAIL_LINGER_MESSAGES
            if holds is not None and hold is not None:
                # Guarded while it waits too: a flood holds the inputs at the mark, and
                # the linger ends there instead of waiting for lines that cannot come.
                linger_to = min(linger_to, holds.waiting(hold, cursor))
            with trio.move_on_at(wake):
                await channel.wait_appended()
                with trio.move_on_after(TAIL_LINGER_SECONDS):
                    await channel.wait_head(linger_to)
    finally:
        if holds is not None and hold is not None:
            holds.close(hold)


def channel_logs(
    registry: Registry, channel: Channel, num: int, history: Batch | None = None
) -> tuple[bytes, int]:
    """Body and ``Logplex-Msg-Count`` of ``GET /v3/channels/{name}/logs?num=N``.

    The count is the number of frames actually in the body (lines that are not valid
    RFC 5424 are left out of both). ``history`` (Redis mode) is what was read from the
    channel's stream instead of the local ring.
    """
    num = max(0, min(MAX_NUM, num))
    return channel_log_frames(registry.history(channel, num) if history is None else history)
