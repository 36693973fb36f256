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
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import API_STATUSES, parse_bool
from ..drains import GatedDrainManager
from ..tails import TailSessions
from ..web import (
    AddRoute,
    BasicAuth,
    BasicPassword,
    BasicToken,
    InvalidJson,
    Request,
    Response,
    key_matches,
    parse_authorization,
    parse_json,
)

log = logging.getLogger("logplexd.api.rods")

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
        self._watchers: list[Callable[[RodState], None]] = []
        self._apply()

    def watch(self, on_change: Callable[[RodState], None]) -> None:
        """Call ``on_change(state)`` now and after every change (e.g. the logs listener)."""
        self._watchers.append(on_change)
        on_change(self.state)

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
        for on_change in self._watchers:
            on_change(self.state)
        if self.drains is not None:
            self.drains.set_forwarding_denied(self.state.deny_drain_forwarding)

    # -- the API ---------------------------------------------------------------------------
    def api_gate(self, method: str, route: str | None) -> str | None:
        """Why API_STATUS (or deny_tail_sessions) refuses this request, or None. The
        listener answers it with a 503 in the format of the request's path family."""
        state = self.state
        if route in ALWAYS_OPEN:
            return None
        if state.api_status == DISABLED:
            return "API is disabled (control rod api_status)"
        if state.api_status == READ_ONLY and method not in READ_METHODS:
            return "API is read-only (control rod api_status)"
        if route == "v3.session.create" and state.deny_tail_sessions:
            return "tail sessions are denied (control rod deny_tail_sessions)"
        return None


def _show(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class RodsApi:
    """``GET /admin/rods`` and ``PUT /admin/rods`` (JSON object of rods; auth key only)."""

    def __init__(self, rods: Rods, auth_key: Callable[[], str]) -> None:
        self.rods = rods
        self.auth_key = auth_key

    def _authorized(self, request: Request) -> bool:
        """Basic only, and the auth key only: raw, or as the password of any user."""
        presented = parse_authorization(request.header("authorization"))
        if not isinstance(presented, BasicAuth):
            return False
        key = self.auth_key()
        if key_matches(presented.text, key):
            return True
        # Also base64 of ":KEY" / "user:KEY", as HTTP clients build Basic headers.
        if isinstance(presented, BasicPassword):
            return key_matches(presented.password, key)
        return isinstance(presented, BasicToken) and key_matches(presented.token, key)

    def _unauthorized(self) -> Response:
        return Response.error(401, "Unauthorized", [WWW_AUTHENTICATE])

    def mount(self, add: AddRoute) -> None:
        # The auth key only, never a stored credential: checked here, not by the API.
        add("GET", "/admin/rods", self.get, name="admin.rods.get", auth=False)
        add("PUT", "/admin/rods", self.put, name="admin.rods.put", auth=False)

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
            raw = parse_json(request.body or b"{}")
        except InvalidJson:
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
    "ROD_NAMES",
    "RodError",
    "RodState",
    "Rods",
    "RodsApi",
    "parse_changes",
]
