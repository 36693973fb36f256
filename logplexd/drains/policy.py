"""Pure delivery policy: what a response means, and how long to wait before trying again.

No I/O and no clock here, so every rule is tested as a table.
"""

from __future__ import annotations

import random
import ssl
from enum import Enum

import h11
import trio


class Outcome(Enum):
    DELIVERED = "delivered"
    # The endpoint refused this batch for good (4xx other than 429): never retried.
    DROP = "drop"
    # Anything that may work later: 429, 5xx, 3xx, 1xx, timeouts, resets, refused connects.
    RETRY = "retry"


# Errors that say "this connection (or attempt) failed", as opposed to a bug in our code.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    ssl.SSLError,
    h11.ProtocolError,
    EOFError,
)


def classify(result: int | BaseException) -> Outcome:
    """An HTTP status code, or the exception an attempt ended with -> what to do with the batch."""
    if isinstance(result, BaseException):
        return Outcome.RETRY
    if 200 <= result <= 299:
        return Outcome.DELIVERED
    if 400 <= result <= 499 and result != 429:
        return Outcome.DROP
    return Outcome.RETRY


HTTP_BACKOFF_BASE = 0.5
HTTP_BACKOFF_CAP = 30.0


def http_retry_backoff(
    failures: int,
    rng: random.Random,
    *,
    base: float = HTTP_BACKOFF_BASE,
    cap: float = HTTP_BACKOFF_CAP,
) -> float:
    """Seconds to wait after ``failures`` consecutive failed attempts (0 -> no wait).

    "Equal jitter": half the exponential step is fixed, half random, so a drain never
    retries in a tight loop and many drains failing together do not retry in lockstep.
    ``failures`` runs across batches and resets on any answer from the endpoint, so a dead
    endpoint is probed at most every ``cap`` seconds.
    """
    if failures <= 0:
        return 0.0
    step = min(cap, base * 2.0 ** min(failures - 1, 30))
    return step / 2 + rng.uniform(0, step / 2)


SYSLOG_BACKOFF_CAP = 300.0
# A connection that lived at least this long counts as good: the next reconnect is immediate.
SYSLOG_STABLE_CONNECTION = 30.0


def syslog_reconnect_backoff(
    failures: int,
    rng: random.Random,
    *,
    cap: float = SYSLOG_BACKOFF_CAP,
) -> float:
    """Seconds before reconnecting after ``failures`` consecutive failures (REFERENCE §5.3).

    0 before the first attempt, then 2, 4, 8 ... seconds, capped at 300, plus up to 10 %
    jitter so that drains of one dead host do not reconnect in lockstep.
    """
    if failures <= 0:
        return 0.0
    step = min(cap, 2.0 ** min(failures, 30))
    return step + rng.uniform(0, step / 10)
