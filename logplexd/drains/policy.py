"""Pure delivery policy: what a response means, and how long to wait before trying again.

No I/O and no clock here, so every rule is tested as a table.
"""

from __future__ import annotations

import calendar
import os
import random
import re
import socket
import ssl
import time
from enum import Enum
from typing import TypeVar

import h11
import trio

_E = TypeVar("_E", bound=BaseException)


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


# -- Retry-After on 429 and 503 (RFC 9110 10.2.3, 15.5.20, 15.6.4) ---------------------------

# Answers by which a receiver that is up says "not now": the batch is re-sent (after the
# Retry-After it gives, if any) without using up one of its attempts.
RETRY_LATER_STATUSES = frozenset({429, 503})
# The most a Retry-After can make a drain wait: a receiver must not park it for days.
HTTP_RETRY_AFTER_CAP = HTTP_BACKOFF_CAP


def retry_later(result: int | BaseException) -> bool:
    """Whether ``result`` is a 429 or 503: the receiver asks to come back later."""
    return not isinstance(result, BaseException) and result in RETRY_LATER_STATUSES


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 5.6.7: the preferred IMF-fixdate and the two obsolete forms a recipient must accept.
# HTTP-date is case-sensitive.
_IMF_FIXDATE = re.compile(
    "(?:" + "|".join(_DAYS) + r"), (\d\d) " + _MONTH + r" (\d{4}) " + _TIME + " GMT", re.ASCII
)
_RFC850_DATE = re.compile(
    "(?:" + "|".join(_LONG_DAYS) + r"), (\d\d)-" + _MONTH + r"-(\d\d) " + _TIME + " GMT", re.ASCII
)
_ASCTIME_DATE = re.compile(
    "(?:" + "|".join(_DAYS) + ") " + _MONTH + r" ([ \d]\d) " + _TIME + r" (\d{4})", re.ASCII
)


def _http_date(text: str, now: float) -> float | None:
    """An HTTP-date as seconds since the epoch; None when ``text`` is not one.

    ``now`` (seconds since the epoch) places an rfc850-date's two-digit year: one that
    would be more than 50 years ahead is the most recent such year in the past.
    """
    if match := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC850_DATE.fullmatch(text):
        day, month, short_year, hour, minute, second = match.groups()
        this_year = time.gmtime(now).tm_year
        candidate = this_year - this_year % 100 + int(short_year)
        year = str(candidate - 100 if candidate > this_year + 50 else candidate)
    elif match := _ASCTIME_DATE.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    y, m, d = int(year), _MONTHS.index(month) + 1, int(day)
    # A leap second (60) is allowed by the grammar and counts as the next second.
    if y < 1 or not 1 <= d <= calendar.monthrange(y, m)[1]:
        return None
    if int(hour) > 23 or int(minute) > 59 or int(second) > 60:
        return None
    return float(calendar.timegm((y, m, d, int(hour), int(minute), int(second), 0, 0, 0)))


def retry_after(
    value: bytes | str | None, now: float, *, cap: float = HTTP_RETRY_AFTER_CAP
) -> float | None:
    """Seconds a ``Retry-After`` field value asks to wait, within ``[0, cap]``.

    ``value`` is delta-seconds (``120``) or an HTTP-date (``Fri, 31 Dec 1999 23:59:59 GMT``,
    or one of its two obsolete forms); ``now`` is the wall clock (seconds since the epoch),
    used only for a date. A date in the past, and ``0``, mean at once (0.0); more than
    ``cap`` is ``cap``. None when there is no value or it is not valid (a negative or
    fractional number, a bad date, several values): the caller then uses its own backoff.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    text = value.strip(" \t")
    if text.isascii() and text.isdigit():
        # Past ten digits the number is centuries: no need to convert it to know.
        asked = float(int(text)) if len(text.lstrip("0")) <= 10 else cap
    else:
        when = _http_date(text, now)
        if when is None:
            return None
        asked = when - now
    return min(cap, max(0.0, asked))


SYSLOG_BACKOFF_CAP = 300.0
# A connection that lived at least this long counts as good: the next reconnect is immediate.
# It was 30 s (the original's ``tcp_syslog_reconnect_min``), which made a receiver that drops
# connections every few seconds (the soak's flapping sinks, a load balancer) look dead for
# good: the failure count never reset, so the wait grew 2, 4 ... 300 s *while the receiver
# was up* (a 42 s delivery pause in a 60 s soak; minutes in a model of the 10-minute one,
# tests/test_drain_host_faults.py). 2 s bounds the reconnects to a receiver that keeps
# accepting and dropping at one per 2 s, the same rate as the first backoff step; one that
# drops sooner keeps backing off. Not enough on its own: a connection made just before such
# a drop still counts as a failure (the 10-minute soak still had a 204 s stall), which is
# what ``syslog_failures_after_drop`` fixes once the syslog drain calls it.
SYSLOG_STABLE_CONNECTION = 2.0


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


def syslog_failures_after_drop(failures: int, *, lived: float, delivered: bool) -> int:
    """The failure count after an established connection ended with an error.

    - it lived ``SYSLOG_STABLE_CONNECTION`` or longer: 0 (reconnect at once);
    - it took at least one write: 1 (reconnect in about 2 s). The receiver is alive; the
      original likewise reset its count on every completed write (``tcp_good``);
    - neither (accepted, then closed or failed before any write): one more failure, so a
      receiver that only ever accepts and drops is probed less and less often.
    """
    if lived >= SYSLOG_STABLE_CONNECTION:
        return 0
    if delivered:
        return 1
    return failures + 1


# -- L14: a TLS drain whose peer fails certificate validation (REFERENCE §5.4) ---------------

# While a drain keeps failing on its certificate, its channel is reminded at most this often.
# The original wrote L14 on every failed connect after the first, so at its 300 s backoff cap
# about every 5 minutes but every 2, 4, 8 ... s at first; one notice per failing streak plus
# one per interval keeps the channel readable and still reaches a tail opened later.
L14_INTERVAL = 300.0

# The prefix OpenSSL gives the reason of a TLS alert received from the peer.
_ALERT_PREFIXES = ("TLSV1_ALERT_", "TLSV13_ALERT_", "SSLV3_ALERT_")


def _find(error: BaseException | str, kind: type[_E]) -> _E | None:
    """``error`` or the first of its causes that is a ``kind`` (trio raises
    ``BrokenResourceError`` with the ssl or socket error as its cause)."""
    current: BaseException | str | None = error
    for _ in range(5):
        if current is None or isinstance(current, str):
            return None
        if isinstance(current, kind):
            return current
        current = current.__cause__ or current.__context__
    return None


def connect_failure_reasons(error: BaseException | str) -> str | None:
    """Why every address refused, when ``error`` is trio's "all attempts to connect to ...
    failed" (whose text alone does not say): the distinct reasons of the attempts, such as
    ``Connection refused``. None for any other error."""
    if isinstance(error, str) or not isinstance(error, OSError):
        return None
    group = error.__cause__
    if not isinstance(group, BaseExceptionGroup):
        return None
    reasons: list[str] = []
    for attempt in group.exceptions:
        # trio's strerror repeats the address; the errno's own words are enough.
        if isinstance(attempt, OSError) and attempt.errno:
            text = os.strerror(attempt.errno)
        else:
            text = str(attempt) or type(attempt).__name__
        if text not in reasons:
            reasons.append(text)
    return "; ".join(reasons) or None


def unresolved_name(error: BaseException | str) -> str | None:
    """The resolver's reason when ``error`` is a drain host name that did not resolve."""
    found = _find(error, socket.gaierror)
    return None if found is None else str(found.strerror or found)


def certificate_failure(error: BaseException | str) -> str | None:
    """The ``error="..."`` text of an L14 notice, or None when ``error`` is not a TLS failure.

    A TLS failure is a certificate that failed our verification (untrusted, expired, wrong
    host name: OpenSSL's own words, such as ``self-signed certificate``) or a TLS alert the
    peer sent during the handshake (``unknown ca``, ``handshake failure``): what the original
    reports as ``{tls_alert, Alert}``. Refused connections, timeouts, unresolvable names and
    resets are not: they get no L14.
    """
    found = _find(error, ssl.SSLError)
    if found is None:
        return None
    if isinstance(found, ssl.SSLCertVerificationError):
        return str(found.verify_message or "certificate verify failed")
    reason = getattr(found, "reason", None) or ""
    for prefix in _ALERT_PREFIXES:
        if reason.startswith(prefix):
            return reason[len(prefix) :].replace("_", " ").lower()
    return None


def l14_due(last_notice: float | None, now: float, interval: float = L14_INTERVAL) -> bool:
    """Whether a certificate failure at ``now`` gets an L14 notice.

    ``last_notice`` is when the current failing streak last had one (None: not yet). A
    streak ends when the drain delivers or its URL changes, so the next failure after that
    is announced again at once.
    """
    return last_notice is None or now - last_notice >= interval


def _quoted(text: str) -> str:
    # Inside error="..." and uri="...": a quote or backslash is escaped, and control
    # characters (a CR/LF would forge a line in session output) become spaces.
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(" " if ord(ch) < 0x20 or ord(ch) == 0x7F else ch for ch in text)


def l14_frame(drain_token: str, alert: str, uri: str, timestamp: bytes) -> bytes:
    """The L14 line as the channel stores it (one syslog frame, no length prefix).

    ``<188>1 TIME <drain token> heroku logplex - - Error L14 (certificate validation):
    error="<alert>" uri="<url>"``: PRI 188 is local7.warning, HOSTNAME is the drain's token,
    APP-NAME ``heroku`` (the original wrote the channel's ``heroku`` token id and renamed it;
    we need no such token). No trailing LF: session lines, channel logs and drains each add
    the line end their format wants. ``uri`` should be the redacted URL: the channel's
    readers must not see a drain password.
    """
    text = f'Error L14 (certificate validation): error="{_quoted(alert)}" uri="{_quoted(uri)}"'
    return (
        b"<188>1 "
        + timestamp
        + b" "
        + drain_token.encode()
        + b" heroku logplex - - "
        + text.encode("utf-8", "replace")
    )
