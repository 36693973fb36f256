"""The control API: every route of the Logplex API, sans-IO (a Request in, a Response out).

Order of checks for a request: route (404), method (405), authentication (401),
Content-Type of a non-empty body (415), JSON (400), then the route's own validation.
Status codes and bodies follow ``seeds/logplex-api.md`` first, REFERENCE part A second,
and the original where both are silent; errors are always ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol
from urllib.parse import quote

from ..router import RegistryLike, attach_registry
from ..store import (
    OVERFLOW_MODES,
    SESSION_TTL_SECONDS,
    ChannelExists,
    ChannelNotFound,
    DrainExists,
    DrainLimitReached,
    DrainNotFound,
    DrainRecord,
    InvalidDrainUrl,
    Store,
    StoreError,
    StoreUnavailable,
    TokenRecord,
    parse_drain_url,
    redact_url,
    syslog_url,
)
from ..web import (
    FULL_API,
    BasicAuth,
    BasicPassword,
    CredentialChecker,
    ErrorFormat,
    InvalidJson,
    Match,
    MethodNotAllowed,
    Params,
    Request,
    Response,
    RouteHandler,
    Router,
    key_matches,
    parse_authorization,
    parse_json,
)

log = logging.getLogger("logplexd.api")

WWW_AUTHENTICATE = ("WWW-Authenticate", "Basic realm=Logplex")
MAX_CHANNEL_NAME = 256
MAX_TOKEN_NAME = 256
SESSION_KEYS = ("channel_id", "num", "tail", "ps", "source")
LOG_SESSION_URL_TTL = 300.0
LOG_SESSION_TAIL_MAX = 3600.0
# Answers a request no route matched (404) or whose method no route takes (405).
Unmatched = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _reject(status: int, message: str) -> _BadRequest:
    return _BadRequest(Response.error(status, message))


def _json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object; an empty body means no parameters."""
    if not request.body.strip():
        return {}
    media = request.content_type
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise _reject(415, "Content-Type must be application/json")
    try:
        value = parse_json(request.body)
    except InvalidJson:
        raise _reject(400, "invalid JSON") from None
    if not isinstance(value, dict):
        raise _reject(400, "invalid payload")
    return value


def _is_text(value: object, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit


# How each API version words the store's refusals of a drain write (status, message).
_V2_DRAIN_ERRORS: dict[type[Exception], tuple[int, str]] = {
    ChannelNotFound: (404, "No such channel"),
    DrainNotFound: (404, "Unknown drain."),
    DrainLimitReached: (422, "You have already added the maximum number of drains allowed"),
    DrainExists: (409, "Already exists"),
}
_V3_DRAIN_ERRORS: dict[type[Exception], tuple[int, str]] = {
    ChannelNotFound: (404, "channel not found"),
    DrainNotFound: (404, "drain not found"),
    DrainLimitReached: (422, "maximum number of drains reached"),
    DrainExists: (409, "already exists"),
}


async def _drain_write(
    errors: dict[type[Exception], tuple[int, str]], write: Awaitable[DrainRecord]
) -> DrainRecord:
    try:
        return await write
    except (ChannelNotFound, DrainNotFound, DrainLimitReached, DrainExists) as exc:
        for kind, (status, message) in errors.items():
            if isinstance(exc, kind):
                raise _reject(status, message) from None
        raise


def _is_token_name(value: object) -> bool:
    # A token's name replaces APP-NAME in every frame it routes (sessions, drains): a space
    # or a control character (CR/LF) there would shift RFC 5424 fields or forge lines.
    if not isinstance(value, str) or not _is_text(value, MAX_TOKEN_NAME):
        return False
    return value.isprintable() and not any(ch.isspace() for ch in value)


def _tokens_map(tokens: list[TokenRecord]) -> dict[str, str]:
    return {t.name: t.id for t in sorted(tokens, key=lambda t: (t.name, t.id))}


def _drain_json(drain: DrainRecord) -> dict[str, Any]:
    if drain.url is None:
        return {"id": drain.id, "token": drain.token}
    return {"id": drain.id, "token": drain.token, "url": drain.url}


class DrainFigures(Protocol):
    """What ``?stats=1`` shows of a running drain (``drains.DrainStats`` has it)."""

    @property
    def drain_id(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def delivered(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def retried(self) -> int: ...
    @property
    def lost(self) -> int: ...
    @property
    def buffered(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def last_error_at(self) -> float | None: ...


DRAIN_STATS_KEYS = (
    "state",
    "delivered",
    "dropped",
    "retried",
    "lost",
    "buffered",
    "last_error",
    "last_error_at",
)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    auth_key: str
    public_url: str
    max_drains_per_channel: int = 6
    # Logplex's own sessions (v2/v3): the URL lives 360 s, a tail until the client leaves.
    session_ttl: float = SESSION_TTL_SECONDS
    # Platform log-sessions (the Platform API reference): the URL lives about 5 minutes
    # unconnected, a connected tail about an hour (settings session_url_ttl, tail_max_duration).
    log_session_ttl: float = LOG_SESSION_URL_TTL
    log_session_tail_max: float = LOG_SESSION_TAIL_MAX


class ControlApi:
    """``await api.handle(request)`` answers one request; it never touches a socket."""

    def __init__(
        self,
        store: Store,
        registry: RegistryLike | None,
        *,
        auth_key: str,
        public_url: str,
        max_drains_per_channel: int = 6,
        session_ttl: float = SESSION_TTL_SECONDS,
        log_session_ttl: float = LOG_SESSION_URL_TTL,
        log_session_tail_max: float = LOG_SESSION_TAIL_MAX,
        credential_checker: CredentialChecker | None = None,
        drain_stats: Callable[[str], Iterable[DrainFigures]] | None = None,
    ) -> None:
        self.store = store
        # Per-drain delivery figures for ``GET /v3/channels/{name}?stats=1``, provided by
        # whoever runs the drains; the default body never has them.
        self.drain_stats = drain_stats
        self.config = ApiConfig(
            auth_key=auth_key,
            public_url=public_url.rstrip("/"),
            max_drains_per_channel=max_drains_per_channel,
            session_ttl=session_ttl,
            log_session_ttl=log_session_ttl,
            log_session_tail_max=log_session_tail_max,
        )
        self.credentials = credential_checker or CredentialChecker(store)
        # The registry is loaded now and follows every durable change from here on.
        self._detach_registry = attach_registry(store, registry) if registry is not None else None
        self._openapi = resources.files("logplexd").joinpath("openapi.json").read_bytes()
        self.router = Router()
        self._unmatched: list[tuple[str, Unmatched]] = []
        self._error_formats: list[tuple[str, ErrorFormat]] = []
        self._add_routes()

    def close(self) -> None:
        if self._detach_registry is not None:
            self._detach_registry()
            self._detach_registry = None

    def add_route(
        self, method: str, template: str, handler: RouteHandler, *, name: str, auth: bool = True
    ) -> None:
        """Serve another route on this listener (e.g. ``GET /sessions/{session_id}``)."""
        self.router.add(method, template, handler, name=name, auth=auth)

    def add_unmatched(self, prefixes: Iterable[str], answer: Unmatched) -> None:
        """``answer(request)`` replies instead of the Logplex ``{"error"}`` 404 and 405 for a
        path equal to one of ``prefixes`` or under it (the Platform API's own error format).
        """
        for prefix in prefixes:
            self._unmatched.append((prefix.rstrip("/"), answer))

    def _unmatched_for(self, path: str) -> Unmatched | None:
        for prefix, answer in self._unmatched:
            if path == prefix or path.startswith(prefix + "/"):
                return answer
        return None

    def add_error_format(self, prefixes: Iterable[str], errors: ErrorFormat) -> None:
        """``errors(request, status, message)`` words the errors no route writes (the
        server's 400/408/413/431/500, the control rods' 503) for a path equal to one of
        ``prefixes`` or under it; other paths keep Logplex's ``{"error": ...}``."""
        for prefix in prefixes:
            self._error_formats.append((prefix.rstrip("/"), errors))

    def error_response(self, request: Request, status: int, message: str) -> Response:
        """An error no route wrote, in the format of the request's path family (the
        ``ErrorFormat`` the HTTP server and the listener's gate answer with)."""
        path = request.path
        for prefix, errors in self._error_formats:
            if path == prefix or path.startswith(prefix + "/"):
                return errors(request, status, message)
        return Response.error(status, message)

    def _add_routes(self) -> None:
        add = self.router.add
        add("POST", "/channels", self._create_channel_v2, name="v2.channel.create")
        add("GET", "/v2/channels/{channel_id:int}", self._get_channel_v2, name="v2.channel.get")
        add(
            "DELETE",
            "/v2/channels/{channel_id:int}",
            self._delete_channel_v2,
            name="v2.channel.delete",
        )
        add(
            "POST",
            "/v2/channels/{channel_id:int}/tokens",
            self._create_token_v2,
            name="v2.token.create",
        )
        add(
            "POST",
            "/v2/channels/{channel_id:int}/drains",
            self._create_drain_v2,
            name="v2.drain.create",
        )
        add(
            "POST",
            "/v2/channels/{channel_id:int}/drains/{drain_id:int}",
            self._update_drain_v2,
            name="v2.drain.update",
        )
        add(
            "DELETE",
            "/v2/channels/{channel_id:int}/drains/{drain_id:int}",
            self._delete_drain_v2,
            name="v2.drain.delete",
        )
        add("PUT", "/v3/channels/{channel}", self._put_channel_v3, name="v3.channel.put")
        add("GET", "/v3/channels/{channel}", self._get_channel_v3, name="v3.channel.get")
        add("DELETE", "/v3/channels/{channel}", self._delete_channel_v3, name="v3.channel.delete")
        add("POST", "/v3/channels/{channel}/tokens", self._create_token_v3, name="v3.token.create")
        add("POST", "/v3/channels/{channel}/drains", self._create_drain_v3, name="v3.drain.create")
        add(
            "PUT",
            "/v3/channels/{channel}/drains/{drain_id:int}",
            self._update_drain_v3,
            name="v3.drain.update",
        )
        add(
            "DELETE",
            "/v3/channels/{channel}/drains/{drain_id:int}",
            self._delete_drain_v3,
            name="v3.drain.delete",
        )
        add("POST", "/v2/sessions", self._create_session_v2, name="v2.session.create")
        add("POST", "/v3/sessions", self._create_session_v3, name="v3.session.create")
        add("GET", "/healthcheck", self._healthcheck, name="healthcheck")
        add("GET", "/v3/healthcheck", self._healthcheck_v3, name="v3.healthcheck", auth=False)
        add("GET", "/openapi.json", self._openapi_json, name="openapi", auth=False)

    # -- entry point ---------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        started = time.monotonic()
        route_name = "-"
        try:
            found = self.router.match(request.method, request.path)
            unmatched = self._unmatched_for(request.path) if not isinstance(found, Match) else None
            if unmatched is not None:
                response = await unmatched(request)
            elif found is None:
                response = Response.error(404, "Not Found")
            elif isinstance(found, MethodNotAllowed):
                response = Response.error(
                    405, "Method Not Allowed", [("Allow", ", ".join(found.allowed))]
                )
            else:
                route_name = found.endpoint.name
                if found.endpoint.auth and not await self._authorized(request):
                    response = Response.error(401, "Unauthorized", [WWW_AUTHENTICATE])
                else:
                    response = await found.endpoint.handler(request, found.params)
        except _BadRequest as bad:
            response = bad.response
        except StoreUnavailable:
            response = Response.error(503, "store unavailable")
        log.info(
            "api: route=%s method=%s status=%d request_id=%s ms=%.1f",
            route_name,
            request.method,
            response.status,
            request.request_id,
            (time.monotonic() - started) * 1000,
        )
        return response

    async def _authorized(self, request: Request) -> bool:
        """Basic only: the auth key, or a stored ``id:password`` with ``full_api``."""
        presented = parse_authorization(request.header("authorization"))
        # As the original: the raw key itself, not base64, follows "Basic ".
        if isinstance(presented, BasicAuth) and key_matches(presented.text, self.config.auth_key):
            return True
        # Not Bearer, and not ":token" either: no stored credential has an empty id.
        if not isinstance(presented, BasicPassword):
            return False
        credential = await self.credentials.check(presented.user, presented.password)
        return credential is not None and FULL_API in credential.permissions

    # -- channels ------------------------------------------------------------------------------
    async def _create_channel_v2(self, request: Request, params: Params) -> Response:
        body = _json_object(request)
        label = body.get("name")
        if not _is_text(label, MAX_CHANNEL_NAME):
            raise _reject(400, "Channel name must be a string.")
        token_names = self._token_names(body.get("tokens", []), "Tokens must be a list of strings.")
        channel, tokens = await self.store.create_channel(label=label, token_names=token_names)
        log.info("api: created channel %s with %d tokens", channel.name, len(tokens))
        return Response.json(201, {"channel_id": int(channel.name), "tokens": _tokens_map(tokens)})

    def _token_names(self, value: object, message: str) -> list[str]:
        if not isinstance(value, list) or not all(_is_token_name(n) for n in value):
            raise _reject(400, message)
        return value

    def _v2_channel(self, params: Params) -> str:
        name = params["channel_id"]
        if self.store.channel(name) is None:
            raise _reject(404, "Not Found")
        return name

    async def _get_channel_v2(self, request: Request, params: Params) -> Response:
        name = self._v2_channel(params)
        return Response.json(
            200,
            {
                "channel_id": int(name),
                "tokens": _tokens_map(self.store.tokens_of(name)),
                "drains": [_drain_json(d) for d in self.store.drains_of(name) if d.url is not None],
            },
        )

    async def _delete_channel_v2(self, request: Request, params: Params) -> Response:
        name = params["channel_id"]
        if not await self.store.delete_channel(name):
            raise _reject(404, "Not Found")
        log.info("api: deleted channel %s", name)
        return Response.empty(200)

    def _v3_channel_json(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = {"channel": name}
        channel = self.store.channel(name)
        if channel is not None and channel.overflow is not None:
            result["overflow"] = channel.overflow
        tokens = self.store.tokens_of(name)
        if tokens:
            result["tokens"] = _tokens_map(tokens)
        drains = [_drain_json(d) for d in self.store.drains_of(name) if d.url is not None]
        if drains:
            result["drains"] = drains
        return result

    async def _put_channel_v3(self, request: Request, params: Params) -> Response:
        name = params["channel"]
        if len(name) > MAX_CHANNEL_NAME or not name.isprintable():
            raise _reject(400, "invalid channel name")
        body = _json_object(request)
        token_names = self._token_names(body.get("tokens", []), "invalid payload")
        # PUT sets the whole channel, as it does its tokens: without "overflow" (or with
        # null) the channel follows the daemon's drain_overflow again.
        overflow = body.get("overflow")
        if overflow is not None and overflow not in OVERFLOW_MODES:
            modes = " or ".join(f'"{mode}"' for mode in OVERFLOW_MODES)
            raise _reject(422, f"overflow must be {modes}")
        result = await self.store.put_channel(name, token_names, overflow=overflow)
        if result.created:
            log.info("api: created channel %s", name)
        return Response.json(201 if result.created else 200, self._v3_channel_json(name))

    async def _get_channel_v3(self, request: Request, params: Params) -> Response:
        name = params["channel"]
        if self.store.channel(name) is None:
            raise _reject(404, "channel not found")
        body = self._v3_channel_json(name)
        wants_stats = request.query_params().get("stats", "").lower() in ("1", "true")
        if wants_stats and self.drain_stats is not None and "drains" in body:
            live = {
                figures.drain_id: {key: getattr(figures, key) for key in DRAIN_STATS_KEYS}
                for figures in self.drain_stats(name)
            }
            for drain in body["drains"]:
                drain["stats"] = live.get(drain["id"], {"state": "stopped"})
        return Response.json(200, body)

    async def _delete_channel_v3(self, request: Request, params: Params) -> Response:
        name = params["channel"]
        if not await self.store.delete_channel(name):
            raise _reject(404, "channel not found")
        log.info("api: deleted channel %s", name)
        return Response.empty(204)

    # -- tokens ------------------------------------------------------------------------------------
    async def _create_token(
        self, channel: str, request: Request, status_missing: int
    ) -> TokenRecord:
        body = _json_object(request)
        name = body.get("name")
        if not isinstance(name, str) or not _is_token_name(name):
            message = "NAME is a required field" if status_missing == 422 else "name is required"
            raise _reject(status_missing, message)
        try:
            return await self.store.create_token(channel, name)
        except ChannelNotFound:
            raise _reject(
                404, "Not Found" if status_missing == 422 else "channel not found"
            ) from None

    async def _create_token_v2(self, request: Request, params: Params) -> Response:
        name = self._v2_channel(params)
        token = await self._create_token(name, request, 422)
        return Response.json(201, {"name": token.name, "token": token.id})

    async def _create_token_v3(self, request: Request, params: Params) -> Response:
        name = params["channel"]
        if self.store.channel(name) is None:
            raise _reject(404, "channel not found")
        token = await self._create_token(name, request, 400)
        return Response.json(201, {"token": token.id, "name": token.name})

    # -- drains ------------------------------------------------------------------------------------
    def _check_url(self, url: str, prefix: str) -> None:
        try:
            parse_drain_url(url)
        except InvalidDrainUrl as exc:
            raise _reject(422, f"{prefix}{exc}") from None

    def _v2_drain_url(self, body: dict[str, Any]) -> str:
        url = body.get("url")
        if url is None and "host" in body:
            # The original's host/port form: a syslog drain, port 514 unless given.
            host, port = body.get("host"), body.get("port", 514)
            if (
                not isinstance(host, str)
                or not _is_text(host, 255)
                or not isinstance(port, int)
                or isinstance(port, bool)
            ):
                raise _reject(422, "Invalid drain destination: bad host or port")
            try:
                url = syslog_url(host, port)
            except InvalidDrainUrl as exc:
                raise _reject(422, f"Invalid drain destination: {exc}") from None
        if not isinstance(url, str):
            raise _reject(422, "Invalid drain destination: missing url")
        self._check_url(url, "Invalid drain destination: ")
        return url

    async def _create_drain_v2(self, request: Request, params: Params) -> Response:
        body = _json_object(request)
        channel = params["channel_id"]
        if self.store.channel(channel) is None:
            raise _reject(404, "No such channel")
        url = self._v2_drain_url(body)
        drain = await _drain_write(
            _V2_DRAIN_ERRORS,
            self.store.create_drain(channel, url, max_drains=self.config.max_drains_per_channel),
        )
        self._log_drain("created", drain)
        return Response.json(201, _drain_json(drain))

    async def _update_drain_v2(self, request: Request, params: Params) -> Response:
        body = _json_object(request)
        channel = params["channel_id"]
        if self.store.channel(channel) is None:
            raise _reject(404, "No such channel")
        url = self._v2_drain_url(body)
        drain = await _drain_write(
            _V2_DRAIN_ERRORS,
            self.store.update_drain(
                channel, int(params["drain_id"]), url, max_drains=self.config.max_drains_per_channel
            ),
        )
        self._log_drain("updated", drain)
        return Response.json(200, _drain_json(drain))

    async def _delete_drain_v2(self, request: Request, params: Params) -> Response:
        drain = await self.store.delete_drain(params["channel_id"], int(params["drain_id"]))
        if drain is None:
            raise _reject(404, "Not found")
        self._log_drain("deleted", drain)
        return Response.empty(200)

    def _drain_location(self, drain: DrainRecord) -> tuple[str, str]:
        channel = quote(drain.channel, safe="")
        return ("Location", f"{self.config.public_url}/v3/channels/{channel}/drains/{drain.id}")

    async def _create_drain_v3(self, request: Request, params: Params) -> Response:
        channel = params["channel"]
        if self.store.channel(channel) is None:
            raise _reject(404, "channel not found")
        body = _json_object(request)
        url = body.get("url")
        if url is not None:
            if not isinstance(url, str):
                raise _reject(400, "url must be a string")
            self._check_url(url, "invalid drain url: ")
        drain = await _drain_write(
            _V3_DRAIN_ERRORS,
            self.store.create_drain(channel, url, max_drains=self.config.max_drains_per_channel),
        )
        self._log_drain("reserved" if url is None else "created", drain)
        return Response.json(201, _drain_json(drain), [self._drain_location(drain)])

    async def _update_drain_v3(self, request: Request, params: Params) -> Response:
        channel = params["channel"]
        if self.store.channel(channel) is None:
            raise _reject(404, "channel not found")
        body = _json_object(request)
        url = body.get("url")
        if not isinstance(url, str):
            raise _reject(400, "url is required (a string)")
        self._check_url(url, "invalid drain url: ")
        drain = await _drain_write(
            _V3_DRAIN_ERRORS,
            self.store.update_drain(
                channel, int(params["drain_id"]), url, max_drains=self.config.max_drains_per_channel
            ),
        )
        self._log_drain("updated", drain)
        return Response.json(200, _drain_json(drain))

    async def _delete_drain_v3(self, request: Request, params: Params) -> Response:
        channel = params["channel"]
        if self.store.channel(channel) is None:
            raise _reject(404, "channel not found")
        drain = await self.store.delete_drain(channel, int(params["drain_id"]))
        if drain is None:
            raise _reject(404, "drain not found")
        self._log_drain("deleted", drain)
        return Response.empty(204)

    def _log_drain(self, action: str, drain: DrainRecord) -> None:
        log.info(
            "api: %s drain id=%d channel=%s url=%s",
            action,
            drain.id,
            drain.channel,
            redact_url(drain.url),
        )

    # -- sessions ----------------------------------------------------------------------------------
    def _session_body(self, request: Request) -> dict[str, Any]:
        body = _json_object(request)
        if not isinstance(body.get("channel_id"), str) or not body["channel_id"]:
            raise _reject(400, "channel_id is required and must be a string")
        num = body.get("num")
        if num is not None and not _is_count(num):
            raise _reject(400, "num must be a non-negative integer")
        for key in ("ps", "source"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise _reject(400, f"{key} must be a string")
        return {key: body[key] for key in SESSION_KEYS if key in body}

    async def _new_session_url(self, body: dict[str, Any]) -> str:
        try:
            session = await self.store.create_session(body, ttl=self.config.session_ttl)
        except StoreUnavailable:
            raise
        except StoreError:
            raise _reject(400, "invalid payload") from None
        return f"{self.config.public_url}/sessions/{session.id}"

    async def _create_session_v2(self, request: Request, params: Params) -> Response:
        # As the original, v2 does not check that the channel exists.
        url = await self._new_session_url(self._session_body(request))
        return Response.json(201, {"url": url})

    async def _create_session_v3(self, request: Request, params: Params) -> Response:
        body = self._session_body(request)
        if self.store.channel(body["channel_id"]) is None:
            raise _reject(422, "channel not found")
        url = await self._new_session_url(body)
        return Response.json(201, {"url": url}, [("Location", url)])

    # -- health and description ------------------------------------------------------------------
    async def _healthcheck(self, request: Request, params: Params) -> Response:
        if self.store.failure is not None:
            return Response.error(503, "store unavailable")
        return Response.json(200, {"status": "normal"})

    async def _healthcheck_v3(self, request: Request, params: Params) -> Response:
        return Response.text(200, "OK")

    async def _openapi_json(self, request: Request, params: Params) -> Response:
        return Response(200, [("Content-Type", "application/json")], self._openapi)


def _is_count(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 1 << 31
    return isinstance(value, str) and value.isdigit() and value.isascii() and len(value) < 10


__all__ = ["ApiConfig", "ChannelExists", "ControlApi"]
