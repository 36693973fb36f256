"""Log lines: one structured line per event, JSON off a terminal, key=value on one.

Repetitive warnings and errors (the same message template from the same logger) are
rate-limited: a broken drain endpoint or a flood of bad input must not flood the journal.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

# LogRecord attributes that are not "extra" fields of an event.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _iso(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event.update(_extras(record))
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso(record.created)} {record.levelname.lower():7s} {record.name}: "
        line += record.getMessage()
        for key, value in _extras(record).items():
            text = str(value)
            line += f" {key}={json.dumps(text) if (' ' in text or not text) else text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RepeatLimiter(logging.Filter):
    """At most ``burst`` records per (logger, template) in each ``window`` seconds.

    Applies to WARNING and above; the first record after a suppressed stretch says how many
    similar ones were dropped.
    """

    def __init__(
        self,
        burst: int = 5,
        window: float = 60.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        # key -> [window start, records passed in this window, suppressed since last pass]
        self._seen: dict[tuple[str, object], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self.clock()
        key = (record.name, record.msg)
        state = self._seen.get(key)
        if state is None:
            if len(self._seen) >= self.max_keys:
                self._seen.clear()  # bounded: forgetting only lets a few more lines through
            state = self._seen[key] = [now, 0, 0]
        if now - state[0] >= self.window:
            state[0], state[1] = now, 0
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        if state[2]:
            record.suppressed = int(state[2])
            state[2] = 0
        return True


def configure_logging(level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    handler.setFormatter(KeyValueFormatter() if is_tty else JsonFormatter())
    handler.addFilter(RepeatLimiter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
