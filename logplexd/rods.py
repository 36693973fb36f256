"""Control rods (REFERENCE.md section 8): switches an operator throws on a running daemon.

| rod                     | effect                                                              |
| ----------------------- | ------------------------------------------------------------------- |
| `api_status`            | `normal`; `read_only`: every API request but GET/HEAD answers 503;  |
|                         | `disabled`: every API request answers 503 but the health checks,    |
|                         | `/metrics` and `/admin/rods` (v1, v2 and v3 routes alike)            |
| `deny_tail_sessions`    | `POST /v3/sessions` answers 503 (v2 still creates sessions, as the  |
|                         | original); a tail session fetched now sends its history and ends    |
| `kill_tail_sessions`    | an action, not a state: ends every open tail session now            |
| `deny_drain_forwarding` | drains deliver nothing; when lifted they start again from the       |
|                         | present (what arrived meanwhile is not forwarded, as the original)  |
| `deny_logs_ingress`     | `POST /logs` answers 503 (TCP and TLS syslog input unaffected)      |

They start from the configuration (``api_status``, ``deny_*`` settings, so also
``LOGPLEXD_API_STATUS=read_only`` or ``LOGPLEXD_DENY_TAIL_SESSIONS=true``) and change at run
time through ``GET/PUT /admin/rods`` (the auth key only, never a stored credential) or
``logplexd rods NAME=VALUE``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from .config import API_STATUSES, parse_bool
from .creds import decode_basic, key_matches, parse_basic
from .drains import DrainManager, parse_drain_url
from .http.messages import Request, Response
from .registry import Registry

log = logging.getLogger("logplexd.rods")

NORMAL, READ_ONLY, DISABLED = API_STATUSES
FLAG_RODS = ("deny_tail_sessions", "deny_drain_forwarding", "deny_logs_ingress")
ROD_NAMES = ("api_status", *FLAG_RODS)
ACTIONS = ("kill_tail_sessions",)
READ_METHODS = frozenset({"GET", "HEAD"})
# Routes that answer whatever API_STATUS says: monitoring, and the way back to normal.
ALWAYS_OPEN = frozenset(
    {"healthcheck", "v3.healthcheck", "metrics", "admin.rods.get", "admin.rods.put"}
)
TEXT_PLAIN = ("Content-Type", "text/plain; charset=utf-8")
WWW_AUTHENTICATE = ("WWW-Authenticate", "Basic realm=Logplex")


class RodError(ValueError):
    """An unknown rod or a bad value; the text is one line for an API error or a terminal."""


@dataclass(frozen=True)
class RodState:
    api_status: str = NORMAL
    deny_tail_sessions: bool = False
    deny_drain_forwarding: bool = False
    deny_logs_ingress: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> RodState:
        return cls(**{name: getattr(settings, name) for name in ROD_NAMES})

    def flags(self) -> dict[str, bool]:
        """Every rod as engaged or not (``api_status`` counts when it is not normal)."""
        return {
            "api_status": self.api_status != NORMAL,
            **{name: bool(getattr(self, name)) for name in FLAG_RODS},
        }

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def parse_changes(raw: Mapping[str, object]) -> tuple[dict[str, Any], bool]:
    """``(rod changes, kill_tail_sessions)`` from ``{"name": value}``; raises RodError."""
    changes: dict[str, Any] = {}
    kill = False
    for name, value in raw.items():
        if name == "api_status":
            text = value.strip().lower() if isinstance(value, str) else None
            if text not in API_STATUSES:
                raise RodError("api_status must be one of " + ", ".join(API_STATUSES))
            changes[name] = text
        elif name in FLAG_RODS or name in ACTIONS:
            try:
                flag = parse_bool(value)
            except ValueError:
                raise RodError(f"{name} must be true or false") from None
            if name in ACTIONS:
                kill = flag
            else:
                changes[name] = flag
        else:
            raise RodError(f"unknown control rod {name!r}; known: {', '.join(ROD_NAMES + ACTIONS)}")
    return changes, kill


# --- tail sessions ------------------------------------------------------------------------------


class TailSessions:
    """Every open tail session, so that ``kill_tail_sessions`` can end them."""

    def __init__(self) -> None:
        self._open: set[_Tail] = set()
        self.started = 0
        self.killed = 0

    @property
    def active(self) -> int:
        return len(self._open)

    def track(self, body: AsyncIterator[bytes]) -> _Tail:
        tail = _Tail(body, self)
        self._open.add(tail)
        self.started += 1
        return tail

    def kill_all(self) -> int:
        tails = list(self._open)
        for tail in tails:
            tail.kill()
        self.killed += len(tails)
        return len(tails)

    def _forget(self, tail: _Tail) -> None:
        self._open.discard(tail)


class _Tail:
    """A tail's body that ends (cleanly, with the last chunk) when killed.

    Each wait for the next chunk runs in its own cancel scope: killing cancels that wait,
    never the writer, so the HTTP server finishes the chunked response properly.
    """

    def __init__(self, body: AsyncIterator[bytes], owner: TailSessions) -> None:
        self._body = body
        self._owner = owner
        self._killed = False
        self._scope: trio.CancelScope | None = None

    def __aiter__(self) -> _Tail:
        return self

    async def __anext__(self) -> bytes:
        if self._killed:
            raise StopAsyncIteration
        with trio.CancelScope() as scope:
            self._scope = scope
            try:
                return await self._body.__anext__()
            except StopAsyncIteration:
                self._owner._forget(self)
                raise
            finally:
                self._scope = None
        self._owner._forget(self)
        raise StopAsyncIteration

    def kill(self) -> None:
        self._killed = True
        self._owner._forget(self)
        if self._scope is not None:
            self._scope.cancel()

    async def aclose(self) -> None:
        self._owner._forget(self)
        aclose = getattr(self._body, "aclose", None)
        if aclose is not None:
            await aclose()


# --- drains -------------------------------------------------------------------------------------


class GatedDrainManager(DrainManager):
    """A ``DrainManager`` that can stop all delivery (``deny_drain_forwarding``) and resume.

    While denied it remembers every drain the store adds, changes or removes without
    running any; lifting the rod starts them all at the channel's present.
    """

    def __init__(self, registry: Registry, **kwargs: Any) -> None:
        super().__init__(registry, **kwargs)
        self._specs: dict[int, tuple[str, str, str]] = {}
        self.forwarding_denied = False

    @property
    def configured(self) -> int:
        return len(self._specs)

    def add_drain(self, channel_name: str, drain_id: int, token: str, url: str) -> None:
        if self.forwarding_denied:
            parse_drain_url(url)  # the same InvalidDrainUrl as a running drain would raise
            self._specs[drain_id] = (channel_name, token, url)
            return
        super().add_drain(channel_name, drain_id, token, url)
        self._specs[drain_id] = (channel_name, token, url)

    def update_drain(self, drain_id: int, url: str) -> bool:
        spec = self._specs.get(drain_id)
        if spec is None:
            return False
        if self.forwarding_denied:
            parse_drain_url(url)
            self._specs[drain_id] = (spec[0], spec[1], url)
            return True
        updated = super().update_drain(drain_id, url)
        if updated:
            self._specs[drain_id] = (spec[0], spec[1], url)
        return updated

    def remove_drain(self, drain_id: int) -> bool:
        known = self._specs.pop(drain_id, None) is not None
        return super().remove_drain(drain_id) or known

    def remove_channel(self, channel_name: str) -> int:
        ids = [i for i, spec in self._specs.items() if spec[0] == channel_name]
        for drain_id in ids:
            self.remove_drain(drain_id)
        return len(ids)

    def set_forwarding_denied(self, denied: bool) -> None:
        if denied == self.forwarding_denied:
            return
        self.forwarding_denied = denied
        if denied:
            for drain_id in list(self._drains):
                DrainManager.remove_drain(self, drain_id)
            log.warning("control rod deny_drain_forwarding on: %d drains stopped", len(self._specs))
        else:
            for drain_id, (channel, token, url) in list(self._specs.items()):
                DrainManager.add_drain(self, channel, drain_id, token, url)
            log.warning(
                "control rod deny_drain_forwarding off: %d drains started", len(self._specs)
            )


# --- the rods and their effects ---------------------------------------------------------------


class Rods:
    def __init__(
        self,
        state: RodState,
        *,
        tails: TailSessions,
        drains: GatedDrainManager | None = None,
    ) -> None:
        self.state = state
        self.tails = tails
        self.drains = drains
        self.logs: Any = None  # LogsIngest, once the daemon made it
        self._apply()

    def attach_logs(self, logs: Any) -> None:
        self.logs = logs
        self._apply()

    def set(self, changes: Mapping[str, Any]) -> RodState:
        """Apply already parsed changes (``parse_changes``); logs every rod that moved."""
        old = self.state
        self.state = dataclasses.replace(old, **changes)
        for name in ROD_NAMES:
            before, after = getattr(old, name), getattr(self.state, name)
            if before != after:
                log.warning("control rod %s: %s -> %s", name, _show(before), _show(after))
        self._apply()
        return self.state

    def kill_tail_sessions(self) -> int:
        killed = self.tails.kill_all()
        log.warning("control rod kill_tail_sessions: %d tail sessions ended", killed)
        return killed

    def _apply(self) -> None:
        if self.logs is not None:
            self.logs.deny_ingress = self.state.deny_logs_ingress
        if self.drains is not None:
            self.drains.set_forwarding_denied(self.state.deny_drain_forwarding)

    # -- the API ---------------------------------------------------------------------------
    def api_gate(self, method: str, route: str | None) -> Response | None:
        """The 503 that API_STATUS (or deny_tail_sessions) gives this request, or None."""
        state = self.state
        if route in ALWAYS_OPEN:
            return None
        if state.api_status == DISABLED:
            return Response.error(503, "API is disabled (control rod api_status)")
        if state.api_status == READ_ONLY and method not in READ_METHODS:
            return Response.error(503, "API is read-only (control rod api_status)")
        if route == "v3.session.create" and state.deny_tail_sessions:
            return Response.error(503, "tail sessions are denied (control rod deny_tail_sessions)")
        return None


def _show(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class RodsApi:
    """``GET /admin/rods`` and ``PUT /admin/rods`` (JSON object of rods; auth key only)."""

    def __init__(self, rods: Rods, auth_key: Callable[[], str]) -> None:
        self.rods = rods
        self.auth_key = auth_key

    def _authorized(self, request: Request) -> bool:
        presented = parse_basic(request.header("authorization"))
        if not presented:
            return False
        key = self.auth_key()
        if key_matches(presented, key):
            return True
        # Also base64 of ":KEY" / "user:KEY", as HTTP clients build Basic headers.
        pair = decode_basic(presented)
        return pair is not None and key_matches(pair[1], key)

    def _unauthorized(self) -> Response:
        return Response.error(401, "Unauthorized", [WWW_AUTHENTICATE])

    async def get(self, request: Request, params: dict[str, str]) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        return Response.json(200, self._body())

    async def put(self, request: Request, params: dict[str, str]) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        if request.body.strip() and request.content_type not in ("application/json", ""):
            return Response.error(415, "Content-Type must be application/json")
        try:
            raw = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            return Response.error(400, "invalid JSON")
        if not isinstance(raw, dict):
            return Response.error(400, "expected a JSON object of control rods")
        try:
            changes, kill = parse_changes(raw)
        except RodError as exc:
            return Response.error(422, str(exc))
        self.rods.set(changes)
        killed = self.rods.kill_tail_sessions() if kill else None
        return Response.json(200, self._body(killed))

    def _body(self, killed: int | None = None) -> dict[str, object]:
        body: dict[str, object] = {
            **self.rods.state.as_dict(),
            "tail_sessions": self.rods.tails.active,
        }
        if killed is not None:
            body["killed_tail_sessions"] = killed
        return body


__all__ = [
    "ACTIONS",
    "ALWAYS_OPEN",
    "GatedDrainManager",
    "ROD_NAMES",
    "RodError",
    "RodState",
    "Rods",
    "RodsApi",
    "TailSessions",
    "parse_changes",
]
