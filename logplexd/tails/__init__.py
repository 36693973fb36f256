"""Tails: log sessions that replay a channel's history and follow it live.

``stream_session``/``channel_logs`` (``sessions.py``) read a channel's ring with a cursor; a
tail that is lapped gets an exact ``L11`` line. ``TailSessions`` (``tracking.py``) counts the
open tails and ends them all for the ``kill_tail_sessions`` rod.
"""

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
from .tracking import TailSessions

__all__ = [
    "DEFAULT_NUM",
    "MAX_DURATION_KEY",
    "MAX_NUM",
    "SessionParamError",
    "SessionParams",
    "TailSessions",
    "channel_logs",
    "parse_session_params",
    "stream_session",
]
