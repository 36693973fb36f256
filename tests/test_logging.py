"""Log lines: JSON off a terminal, key=value on one, repetitive errors rate-limited."""

import io
import json
import logging

from logplexd.daemon._logging import (
    JsonFormatter,
    KeyValueFormatter,
    RepeatLimiter,
    configure_logging,
)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args, level=logging.WARNING, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("logplexd.drains", level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_line_has_the_event_fields_and_extras():
    line = JsonFormatter().format(record("drain %d: %s", 7, "refused", drain_id=7))
    event = json.loads(line)
    assert event["level"] == "warning" and event["logger"] == "logplexd.drains"
    assert event["msg"] == "drain 7: refused" and event["drain_id"] == 7
    assert event["ts"].endswith("Z") and "\n" not in line


def test_key_value_line_quotes_values_with_spaces():
    line = KeyValueFormatter().format(record("hello", channel="my app", n=3))
    assert line.split(" ", 2)[1] == "warning"
    assert line.endswith('logplexd.drains: hello channel="my app" n=3')


def test_repetitive_warnings_are_limited_and_the_next_line_says_how_many():
    clock = Clock()
    limiter = RepeatLimiter(burst=3, window=60, clock=clock)
    passed = [limiter.filter(record("drain %d down", i)) for i in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert limiter.filter(record("another template"))  # other events are not affected
    assert limiter.filter(record("debug noise", level=logging.INFO))
    clock.now = 61
    again = record("drain %d down", 99)
    assert limiter.filter(again) and again.suppressed == 7


def test_configure_logging_picks_json_for_a_pipe():
    stream = io.StringIO()
    configure_logging(logging.INFO, stream)
    try:
        logging.getLogger("logplexd.test").info("started", extra={"port": 8001})
        event = json.loads(stream.getvalue().strip().splitlines()[-1])
        assert event["msg"] == "started" and event["port"] == 8001
    finally:
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
