"""Server-sent events (the WHATWG ``text/event-stream`` format) for session streams.

A session asked for with ``Accept: text/event-stream`` (an ``EventSource``: the heroku CLI's
``heroku logs``) gets one event per log line instead of plain text: ``data: <line>`` and an
empty line. The line is the session's plain line without its line break; a break inside it
(CR, LF or CRLF: a multi-line syslog message) starts another ``data:`` line of the same
event, which the client joins back with LF. While a tail is idle a comment line
(``KEEPALIVE``) keeps proxies and clients from timing the connection out; a stream that
ends by itself says ``RECONNECT_AT_ONCE`` last.

``sse_events`` is the format; the native ``session_lines(..., sse=True)`` writes the same
bytes for whole batches (tests hold it to this function), and the rare lines logplexd makes
itself (L11) go through ``sse_event``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

EVENT_STREAM = "text/event-stream"
# A comment: ignored by every client, it only proves the connection alive.
KEEPALIVE = b": keep-alive\n\n"
DEFAULT_KEEPALIVE_SECONDS = 15.0
# The last bytes of a stream that ended by itself: reconnect at once (an EventSource waits
# 3 s by default, and the heroku CLI's process with it), to be told 204 or 404 and stop.
RECONNECT_AT_ONCE = b"retry: 0\n\n"

_BREAK = re.compile(rb"\r\n|\r|\n")
_TRAILING_BREAKS = b"\r\n"


def sse_event(line: bytes) -> bytes:
    """One event whose data is ``line`` (its trailing CR/LF dropped, inner breaks kept)."""
    data = _BREAK.sub(b"\ndata: ", line.rstrip(_TRAILING_BREAKS))
    return b"data: " + data + b"\n\n"


def sse_events(lines: Iterable[bytes]) -> bytes:
    """One event per line, in order."""
    return b"".join([sse_event(line) for line in lines])
