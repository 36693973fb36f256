"""The conventions every Platform API v3 route follows, as pure functions and small classes.

Version negotiation (``Accept``), errors (``{"id", "message"}``), entity tags and
conditional requests, list ranges (``Range`` / ``Content-Range`` / ``Next-Range``) and the
per-account request-token bucket. Where the 2013 reference and the published clients
(heroku3 5.2.1, heroku-client 3.1.4) disagree, the clients win (REFERENCE part A).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

HEROKU_JSON = "application/vnd.heroku+json"

RATE_LIMIT_CAPACITY = 1200
RATE_LIMIT_PER_HOUR = 1200.0
DEFAULT_PAGE = 200
MAX_PAGE = 1000


class ApiError(Exception):
    """Answer the request with ``status`` and ``{"id": id, "message": message}``."""

    def __init__(
        self,
        status: int,
        error_id: str,
        message: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id
        self.message = message
        self.headers = list(headers)


# The ids the reference gives where they are not the status's phrase in snake case.
_ERROR_IDS = {
    416: "requested_range_not_satisfiable",
    422: "invalid_params",
    429: "rate_limit",
    503: "unavailable",
}


def error_id(status: int) -> str:
    """The ``id`` of an error answered with ``status`` when nothing more precise is known
    (``bad_request``, ``request_timeout``, ``internal_server_error``, ``unavailable``...)."""
    if status in _ERROR_IDS:
        return _ERROR_IDS[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


NOT_ACCEPTABLE_MESSAGE = (
    "Please specify a version along with Heroku's API MIME type. "
    "For example, `Accept: application/vnd.heroku+json; version=3`."
)
UNAUTHORIZED_MESSAGE = "Invalid credentials provided."
RATE_LIMIT_MESSAGE = (
    "Your account reached the API rate limit\nPlease wait a few minutes before making new requests"
)


# -- version negotiation -----------------------------------------------------------------------
_VERSION_3 = re.compile(r"3(?:\.[A-Za-z0-9._-]+)?")


def accepts_version_3(accept: str | None) -> bool:
    """True when some media range is ``application/vnd.heroku+json; version=3[.variant]``.

    heroku3 sends ``version=3.cedar-acm``: a variant of 3 is 3.
    """
    if not accept:
        return False
    for media_range in accept.split(","):
        media, *params = (part.strip() for part in media_range.split(";"))
        if media.lower() != HEROKU_JSON:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "version" and _VERSION_3.fullmatch(value.strip().strip('"')):
                return True
    return False


# -- entity tags -------------------------------------------------------------------------------
def etag_of(body: bytes) -> str:
    """A strong tag: 32 hex digits of the body's SHA-256, quoted (as the reference shows)."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def none_match(header: str | None, etag: str) -> bool:
    """True when ``If-None-Match`` names ``etag`` (weak comparison) or is ``*``."""
    if header is None:
        return False
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in _tags(header))


def match_fails(header: str | None, etag: str) -> bool:
    """True when an ``If-Match`` is given and names neither ``etag`` nor ``*``."""
    if header is None:
        return False
    return not any(tag == "*" or tag == etag for tag in _tags(header))


# -- ranges ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RangeSpec:
    attribute: str
    start: str | None = None
    start_exclusive: bool = False
    end: str | None = None
    end_exclusive: bool = False
    max: int = DEFAULT_PAGE
    descending: bool = False

    def params_text(self) -> str:
        text = f"max={self.max}"
        return text + ", order=desc" if self.descending else text

    def bounds_text(self) -> str:
        start = "" if self.start is None else ("]" if self.start_exclusive else "") + self.start
        end = "" if self.end is None else self.end + ("[" if self.end_exclusive else "")
        return f"{start}..{end}"


def bad_range(message: str) -> ApiError:
    return ApiError(416, "requested_range_not_satisfiable", message)


def parse_range(header: str | None, accepted: Sequence[str]) -> RangeSpec:
    """``<attribute> [[]start]..[end[]][; key=value[, key=value]...]``, parsed leniently.

    heroku3 sends ``id ..; ;`` and heroku-client ``id ..; max=1000``: empty parameters and
    stray separators are ignored, so are unknown keys. An unknown attribute, bounds without
    ``..``, a ``max`` outside 1..1000 or an ``order`` other than asc/desc raise a 416.
    """
    if header is None or not header.strip():
        return RangeSpec(accepted[0])
    head, _, params = header.strip().partition(";")
    attribute, _, bounds = head.strip().partition(" ")
    attribute = attribute.strip()
    if attribute not in accepted:
        supported = ", ".join(accepted)
        raise bad_range(f"Range by {attribute!r} is not supported; use one of {supported}.")
    bounds = bounds.strip()
    if ".." not in bounds:
        raise bad_range("A range needs `..` between its start and end.")
    start_text, _, end_text = bounds.partition("..")
    spec = RangeSpec(attribute)
    start_exclusive = start_text.startswith("]")
    start = start_text[1:] if start_exclusive else start_text
    end_exclusive = end_text.endswith("[")
    end = end_text[:-1] if end_exclusive else end_text
    size = DEFAULT_PAGE
    descending = False
    for item in re.split(r"[;,]", params):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "max":
            if not sep or not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
                raise bad_range(f"max must be a number from 1 to {MAX_PAGE}.")
            size = int(value)
        elif key == "order":
            if value.lower() not in ("asc", "desc"):
                raise bad_range("order must be asc or desc.")
            descending = value.lower() == "desc"
    return RangeSpec(
        spec.attribute,
        start or None,
        start_exclusive and bool(start),
        end or None,
        end_exclusive and bool(end),
        size,
        descending,
    )


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, object]]
    content_range: str
    next_range: str | None  # None on the last page


def content_range_unit(attribute: str) -> str:
    """The unit a ``Content-Range`` of a list ordered by ``attribute`` names: ``ids``."""
    return attribute + "s"


def paginate(items: Sequence[dict[str, object]], spec: RangeSpec) -> Page:
    """Order ``items`` by the range's attribute, keep those within its bounds, cut a page."""

    def key(item: dict[str, object]) -> str:
        return str(item.get(spec.attribute) or "")

    ordered = sorted(items, key=key, reverse=spec.descending)

    def after_start(value: str) -> bool:
        if spec.start is None:
            return True
        if spec.descending:
            return value < spec.start if spec.start_exclusive else value <= spec.start
        return value > spec.start if spec.start_exclusive else value >= spec.start

    def before_end(value: str) -> bool:
        if spec.end is None:
            return True
        if spec.descending:
            return value > spec.end if spec.end_exclusive else value >= spec.end
        return value < spec.end if spec.end_exclusive else value <= spec.end

    within = [item for item in ordered if after_start(key(item)) and before_end(key(item))]
    page = within[: spec.max]
    # Content-Range counts in the attribute's plural, as the reference's examples show
    # (``Content-Range: ids 0123..4567; max=200``); Next-Range is a Range, whose unit is the
    # attribute itself (``id ]4567..; max=200``).
    unit = content_range_unit(spec.attribute)
    if page:
        first, last = key(page[0]), key(page[-1])
        content_range = f"{unit} {first}..{last}; {spec.params_text()}"
    else:
        content_range = f"{unit} ..; {spec.params_text()}"
    next_range = None
    if len(within) > len(page):
        following = RangeSpec(
            spec.attribute,
            key(page[-1]),
            True,
            spec.end,
            spec.end_exclusive,
            spec.max,
            spec.descending,
        )
        next_range = f"{spec.attribute} {following.bounds_text()}; {following.params_text()}"
    return Page(page, content_range, next_range)


# -- rate limit --------------------------------------------------------------------------------
class TokenBuckets:
    """One bucket per account: ``capacity`` tokens, refilled at ``per_hour`` tokens an hour.

    In memory only: a restart gives everyone a full bucket.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        capacity: int = RATE_LIMIT_CAPACITY,
        per_hour: float = RATE_LIMIT_PER_HOUR,
    ) -> None:
        self._clock = clock
        self.capacity = capacity
        self.rate = per_hour / 3600.0
        self._buckets: dict[str, tuple[float, float]] = {}

    def _level(self, key: str) -> float:
        now = self._clock()
        tokens, then = self._buckets.get(key, (float(self.capacity), now))
        tokens = min(float(self.capacity), tokens + max(0.0, now - then) * self.rate)
        self._buckets[key] = (tokens, now)
        return tokens

    def remaining(self, key: str) -> int:
        return math.floor(self._level(key))

    def take(self, key: str) -> int | None:
        """Spend one token; the whole tokens left, or None (and nothing spent) when empty."""
        tokens = self._level(key)
        if tokens < 1.0:
            return None
        tokens -= 1.0
        self._buckets[key] = (tokens, self._buckets[key][1])
        return math.floor(tokens)
