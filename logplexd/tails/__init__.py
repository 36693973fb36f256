"""Tails: log sessions that replay a channel's history and follow it live.

``stream_session``/``channel_logs`` (``sessions.py``) read a channel's ring with a cursor; a
tail that is lapped gets an exact ``L11`` line. ``TailSessions`` (``tracking.py``) counts the
open tails and ends them all for the ``kill_tail_sessions`` rod. ``sse.py`` is the
server-sent events form of a session (``Accept: text/event-stream``). ``TailHolds``
(``pushback.py``) lets a tail whose reader keeps up hold its channel instead of being lapped.
``TailPump`` (``pump.py``) writes the live lines of every tail on a plain TCP connection from
one task.
"""

from .pump import PumpedTail, TailPump
from .pushback import TailHold, TailHolds
from .sessions import (
    DEFAULT_NUM,
    MAX_DURATION_KEY,
    MAX_NUM,
    SessionParamError,
    SessionParams,
    channel_logs,
    parse_session_params,
    stream_session,
)
from .sse import (
    DEFAULT_KEEPALIVE_SECONDS,
    EVENT_STREAM,
    KEEPALIVE,
    RECONNECT_AT_ONCE,
    sse_event,
    sse_events,
)
from .tracking import TailSessions

__all__ = [
    "DEFAULT_KEEPALIVE_SECONDS",
    "DEFAULT_NUM",
    "EVENT_STREAM",
    "KEEPALIVE",
    "MAX_DURATION_KEY",
    "MAX_NUM",
    "RECONNECT_AT_ONCE",
    "SessionParamError",
    "SessionParams",
    "TailHold",
    "TailHolds",
    "TailPump",
    "PumpedTail",
    "TailSessions",
    "channel_logs",
    "parse_session_params",
    "sse_event",
    "sse_events",
    "stream_session",
]
