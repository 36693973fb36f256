"""Platform API v3 routes for logs: apps, log drains, log sessions, rate limits.

Sans-IO like the control API: each route is an ``async (Request, params) -> Response``
added to the control API's router (``mount_platform``), so it is served on the API
listener. Every route follows the conventions of ``conventions.py`` in this order:
``X-Http-Method-Override`` (on POST), a method the route does not serve (401 without good
credentials, else 405), ``Accept`` version 3 (406), authentication (401), rate limit (429,
not for ``/account/rate-limits``), the route itself (404, 403, 422...), then ``If-Match``
(412) and ``If-None-Match`` (304).

An app is a Logplex channel; creating one creates the channel with a token named ``app``.
The channel is named after the app when it is created (or after its id, when a renamed
app's channel already has that name) and keeps that name for the app's life
(``App.channel``): a rename (``PATCH /apps/{app}`` with ``name``) is one durable write of
the app's record, and its tokens, drains, history and sessions, all held by the channel,
follow it with nothing moved and nothing lost; the old name then answers 404. What the
channel does not hold (uuid, name, owner, region, stack, maintenance, timestamps), the
accounts and the log drains' timestamps are Platform records of the same store
(``store.App``, ``Account``, ``DrainMeta``), so every node sharing a store serves the same
apps. Values logplexd cannot know are fixed: ``web_url`` is ``http://<name>.herokuapp.com``
(the reference's form; the real CLI's ``apps:rename`` reads it), ``archived_at``,
``released_at``, ``git_url`` and ``buildpack_provided_description`` are null,
``repo_size`` and ``slug_size`` are 0, ``acm`` is false; region and stack ids are uuid5 of
their names (a uuid given for one is kept as both id and name). A log drain's id is a uuid5
of the store's drain id and drain token; drains added through the Logplex API show the
app's timestamps.

Authentication: Basic ``{email}:{api-token}`` of an account made with ``logplexd accounts
create``, Basic ``:{api-token}`` (what heroku3 and heroku-client send), Bearer
``{api-token}``, and the daemon's auth key (raw after ``Basic``, or as the password). An
account sees its own apps; the auth key acts as the operator account (``OPERATOR_EMAIL``),
which sees every app and may adopt an existing channel as an app by creating it.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Protocol

import trio

from ...store import (
    Account,
    App,
    AppNameTaken,
    ChannelExists,
    ChannelNotFound,
    DrainExists,
    DrainLimitReached,
    DrainMeta,
    DrainRecord,
    InvalidDrainUrl,
    Store,
    StoreError,
    StoreUnavailable,
    parse_drain_url,
    redact_url,
    utc_timestamp,
)
from ...tails import MAX_DURATION_KEY
from ...web import (
    BasicAuth,
    BasicPassword,
    BasicToken,
    BearerToken,
    ErrorFormat,
    InvalidJson,
    Match,
    Request,
    Response,
    Router,
    key_matches,
    parse_authorization,
    parse_json,
)
from ..control import ApiConfig
from .conventions import (
    NOT_ACCEPTABLE_MESSAGE,
    RATE_LIMIT_MESSAGE,
    UNAUTHORIZED_MESSAGE,
    ApiError,
    TokenBuckets,
    accepts_version_3,
    error_id,
    etag_of,
    match_fails,
    none_match,
    paginate,
    parse_range,
)

log = logging.getLogger("logplexd.api.platform")

NAMESPACE = uuid.UUID("6c6f6770-6c65-7864-8000-706c6174666d")  # fixed: ids must not change
OPERATOR_EMAIL = "operator@logplexd.invalid"
OPERATOR_ID = str(uuid.uuid5(NAMESPACE, "account:operator"))
DEFAULT_REGION = "us"
DEFAULT_STACK = "cedar"
APP_NAME = re.compile(r"[a-z][a-z0-9-]{1,28}[a-z0-9]")
APP_NAME_MESSAGE = (
    "Name must start with a letter, end with a letter or digit and can only contain "
    "lowercase letters, digits, and dashes."
)
APP_RANGES = ("id", "name")
DRAIN_RANGES = ("id",)
ADDON_RANGES = ("id", "name")
MAX_LINES = 1 << 31
JSON_HEADER = ("Content-Type", "application/json")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# The Platform API's top-level resources (the seed's and ``/users``): an unknown path or
# method under one of them is answered in this API's error format, not Logplex's.
PREFIXES = ("/account", "/addon-services", "/apps", "/oauth", "/regions", "/users")
ANY_METHOD = "*"
NOT_FOUND_MESSAGE = (
    "The requested API endpoint was not found. Are you using the right HTTP verb "
    "(i.e. `GET` vs. `POST`), and did you specify your intent to use the "
    "`application/vnd.heroku+json; version=3` media type?"
)


class ChannelLookup(Protocol):
    """Whether a channel is live (the router's registry is one)."""

    def channel(self, name: str) -> object | None: ...


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    email: str
    created_at: str = ""
    operator: bool = False


OPERATOR = Principal(OPERATOR_ID, OPERATOR_EMAIL, operator=True)


@dataclass(slots=True)
class Reply:
    status: int
    payload: Any
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Call:
    request: Request
    params: dict[str, str]
    principal: Principal
    method: str

    def body(self) -> dict[str, Any]:
        """The JSON object sent; an empty body (GET and DELETE often bring one) is ``{}``."""
        raw = self.request.body
        if not raw.strip():
            return {}
        try:
            value = parse_json(raw)
        except InvalidJson:
            raise ApiError(400, "bad_request", "Request body is not valid JSON.") from None
        if not isinstance(value, dict):
            raise ApiError(422, "invalid_params", "Request body must be a JSON object.")
        return value


Handler = Callable[[Call], Awaitable[Reply]]


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _named_id(kind: str, name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{kind}:{name}"))


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def drain_uuid(drain: DrainRecord) -> str:
    """The Platform API id of a store drain: stable, and never reused (the token is random)."""
    return str(uuid.uuid5(NAMESPACE, f"drain:{drain.id}:{drain.token}"))


def _last_modified(payload: Any) -> str | None:
    """An HTTP date from a resource's ``updated_at``, the latest of a list's items'; None
    when there is none (an empty list, a resource without a time)."""
    items = payload if isinstance(payload, list) else [payload]
    stamps = [item.get("updated_at") for item in items if isinstance(item, dict)]
    latest: datetime | None = None
    for stamp in stamps:
        if not isinstance(stamp, str):
            continue
        try:
            when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            continue
        latest = when if latest is None or when > latest else latest
    return None if latest is None else format_datetime(latest, usegmt=True)


def web_url(name: str) -> str:
    """An app's ``web_url``, in the Platform reference's form: from its name alone."""
    return f"http://{name}.herokuapp.com"


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_params", message)


def _reference(value: object, kind: str, default: str) -> tuple[str, str]:
    """(id, name) of a region or stack given as a name, a uuid or ``{"id", "name"}``."""
    if value is None:
        return _named_id(kind, default), default
    ident: object = None
    name: object = None
    if isinstance(value, str):
        ident, name = (value, None) if _is_uuid(value) else (None, value)
    elif isinstance(value, dict):
        ident, name = value.get("id"), value.get("name")
    else:
        raise _invalid(f"{kind} must be a name, an id or an object with id and name.")
    for part in (ident, name):
        if part is not None and (not isinstance(part, str) or not 0 < len(part) <= 100):
            raise _invalid(f"{kind} id and name must be non-empty strings.")
    if ident is None and name is None:
        return _named_id(kind, default), default
    if ident is None:
        assert isinstance(name, str)
        return _named_id(kind, name), name
    assert isinstance(ident, str)
    return ident, name if isinstance(name, str) else ident


class PlatformApi:
    """The routes; ``mount(control_api)`` adds them to a ControlApi's router."""

    def __init__(
        self,
        store: Store,
        *,
        config: Callable[[], ApiConfig],
        registry: ChannelLookup | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        # The channels and the Platform records (accounts, apps, drain timestamps) alike.
        self.store = store
        self._config = config
        self.registry = registry
        self.buckets = TokenBuckets(clock)
        # Every template under ANY_METHOD: which route a path is, whatever its method.
        self._own = Router()

    # -- mounting --------------------------------------------------------------------------
    def routes(self) -> list[tuple[str, str, dict[str, Handler], bool]]:
        """(template, route name, handlers by method, counted against the rate limit)."""
        return [
            ("/apps", "platform.apps", {"GET": self._list_apps, "POST": self._create_app}, True),
            (
                "/apps/{app}",
                "platform.app",
                {"GET": self._get_app, "PATCH": self._update_app, "DELETE": self._delete_app},
                True,
            ),
            (
                "/apps/{app}/log-drains",
                "platform.log_drains",
                {"GET": self._list_drains, "POST": self._create_drain},
                True,
            ),
            (
                "/apps/{app}/log-drains/{drain}",
                "platform.log_drain",
                {"GET": self._get_drain, "DELETE": self._delete_drain},
                True,
            ),
            (
                "/apps/{app}/log-sessions",
                "platform.log_sessions",
                {"POST": self._create_session},
                True,
            ),
            (
                "/apps/{app}/addons",
                "platform.addons",
                {"GET": self._list_addons},
                True,
            ),
            (
                "/users/{user}/apps",
                "platform.user_apps",
                {"GET": self._list_user_apps},
                True,
            ),
            ("/account", "platform.account", {"GET": self._get_account}, True),
            (
                "/account/rate-limits",
                "platform.rate_limits",
                {"GET": self._get_rate_limits},
                False,
            ),
        ]

    def mount(self, add_route: Callable[..., None]) -> None:
        """``add_route(method, template, handler, name=, auth=)`` for every route.

        Every method is routed to the same dispatcher so that a POST with
        ``X-Http-Method-Override`` reaches its handler, and a wrong method gets a 405 in
        this API's error format.
        """
        for template, name, handlers, counted in self.routes():
            dispatch = self._dispatcher(handlers, counted)
            for method in METHODS:
                add_route(method, template, dispatch, name=name, auth=False)
            self._own.add(ANY_METHOD, template, dispatch, name=name, auth=False)

    async def unmatched(self, request: Request) -> Response:
        """The answer for a Platform path the listener's router did not match: a method
        outside ``METHODS`` on one of these routes (405 through ``serve``), or no such
        route (404). ``RateLimit-Remaining`` is sent when the credentials are good.
        """
        found = self._own.match(ANY_METHOD, request.path)
        if isinstance(found, Match):
            return await found.endpoint.handler(request, found.params)
        principal: Principal | None = None
        try:
            principal = await self._authenticate(request)
            reply = Reply(404, {"id": "not_found", "message": NOT_FOUND_MESSAGE})
        except StoreUnavailable:
            reply = Reply(503, {"id": "unavailable", "message": "The store is unavailable."})
        return self._render(request, principal, reply, conditional=False)

    def _dispatcher(
        self, handlers: dict[str, Handler], counted: bool
    ) -> Callable[[Request, dict[str, str]], Awaitable[Response]]:
        async def dispatch(request: Request, params: dict[str, str]) -> Response:
            return await self.serve(request, params, handlers, counted)

        return dispatch

    # -- the conventions ----------------------------------------------------------------------
    async def serve(
        self,
        request: Request,
        params: dict[str, str],
        handlers: dict[str, Handler],
        counted: bool = True,
    ) -> Response:
        principal: Principal | None = None
        method = request.method.upper()
        try:
            override = request.header("x-http-method-override")
            if method == "POST" and override and override.strip():
                method = override.strip().upper()
            if method == "HEAD":
                method = "GET"
            handler = handlers.get(method)
            if handler is None:
                # Whatever the Accept, but only for good credentials: nothing of a route is
                # told without them (401 first, as on every other path).
                principal = await self._authenticate(request)
                if principal is None:
                    raise ApiError(401, "unauthorized", UNAUTHORIZED_MESSAGE)
                allowed = ", ".join([*handlers, *(["HEAD"] if "GET" in handlers else [])])
                raise ApiError(
                    405, "method_not_allowed", "Method not allowed.", [("Allow", allowed)]
                )
            if not accepts_version_3(request.header("accept")):
                raise ApiError(406, "not_acceptable", NOT_ACCEPTABLE_MESSAGE)
            principal = await self._authenticate(request)
            if principal is None:
                raise ApiError(401, "unauthorized", UNAUTHORIZED_MESSAGE)
            if counted and self.buckets.take(principal.id) is None:
                raise ApiError(429, "rate_limit", RATE_LIMIT_MESSAGE)
            # What another node stored and acknowledged is seen here now, not a moment
            # later (a client behind a load balancer creates on one node, reads on another).
            await self.store.refresh()
            reply = await handler(Call(request, params, principal, method))
            return self._render(request, principal, reply, conditional=method == "GET")
        except ApiError as err:
            reply = Reply(err.status, {"id": err.error_id, "message": err.message}, err.headers)
        except StoreUnavailable:
            reply = Reply(503, {"id": "unavailable", "message": "The store is unavailable."}, [])
        except StoreError as exc:
            log.warning("platform: store refused a request: %s", type(exc).__name__)
            reply = Reply(422, {"id": "invalid_params", "message": "Request refused."}, [])
        return self._render(request, principal, reply, conditional=False)

    def _render(
        self, request: Request, principal: Principal | None, reply: Reply, *, conditional: bool
    ) -> Response:
        body = _dumps(reply.payload)
        etag = etag_of(body)
        headers = [JSON_HEADER, ("ETag", etag), *reply.headers]
        modified = _last_modified(reply.payload) if 200 <= reply.status < 300 else None
        if modified is not None:
            headers.append(("Last-Modified", modified))
        if principal is not None:
            headers.append(("RateLimit-Remaining", str(self.buckets.remaining(principal.id))))
        if request.request_id:
            headers.append(("Request-Id", request.request_id))
        if conditional and 200 <= reply.status < 300:
            if match_fails(request.header("if-match"), etag):
                failed = Reply(
                    412,
                    {"id": "precondition_failed", "message": "The resource has changed."},
                )
                return self._render(request, principal, failed, conditional=False)
            if none_match(request.header("if-none-match"), etag):
                return Response(304, [h for h in headers if h is not JSON_HEADER], b"")
        return Response(reply.status, headers, body)

    def _precondition(self, call: Call, current: Any) -> None:
        """``If-Match`` on a change: the tag must be that of the resource as it is now."""
        if match_fails(call.request.header("if-match"), etag_of(_dumps(current))):
            raise ApiError(412, "precondition_failed", "The resource has changed.")

    def _credentials(self, request: Request) -> Principal | tuple[str, str] | None:
        """OPERATOR for the auth key, (user, secret) of an account to look up, or None."""
        presented = parse_authorization(request.header("authorization"))
        auth_key = self._config().auth_key
        # The raw key, as the Logplex API takes it.
        if isinstance(presented, BasicAuth) and key_matches(presented.text, auth_key):
            return OPERATOR
        if isinstance(presented, BasicPassword):
            user, secret = presented.user, presented.password
        elif isinstance(presented, BasicToken | BearerToken):
            user, secret = "", presented.token  # an account found by its token alone
        else:
            return None
        if not secret:
            return None
        if key_matches(secret, auth_key):
            return OPERATOR
        return user, secret

    async def _authenticate(self, request: Request) -> Principal | None:
        found = self._credentials(request)
        if not isinstance(found, tuple):
            return found
        account = self._account(*found)
        if account is None:
            # Perhaps just made by `logplexd accounts create` or on another node.
            await self.store.refresh()
            account = self._account(*found)
        if account is None:
            return None
        return Principal(account.id, account.email, account.created_at)

    def error_response(self, request: Request, status: int, message: str) -> Response:
        """An error no route wrote (the HTTP server's 400, 408, 413, 431 and 500, the
        control rods' 503) in this API's format: ``{"id", "message"}`` with ``Request-Id``,
        and ``RateLimit-Remaining`` when the credentials are good. The records are read as
        they are (never refreshed: an error answer does not wait), and no token is spent.
        """
        principal: Principal | None = None
        try:
            found = self._credentials(request)
            if isinstance(found, tuple):
                account = self._account(*found)
                if account is not None:
                    principal = Principal(account.id, account.email, account.created_at)
            else:
                principal = found
        except StoreError:
            principal = None
        reply = Reply(status, {"id": error_id(status), "message": message})
        return self._render(request, principal, reply, conditional=False)

    def _account(self, user: str, secret: str) -> Account | None:
        if user:
            account = self.store.account_by_email(user)
            return account if account is not None and account.token_matches(secret) else None
        return self.store.account_by_token(secret)

    def _list(self, call: Call, items: list[dict[str, Any]], accepted: tuple[str, ...]) -> Reply:
        spec = parse_range(call.request.header("range"), accepted)
        page = paginate(items, spec)
        headers = [("Accept-Ranges", ", ".join(accepted)), ("Content-Range", page.content_range)]
        if page.next_range is not None:
            headers.append(("Next-Range", page.next_range))
        return Reply(206 if page.next_range is not None else 200, page.items, headers)

    # -- apps ----------------------------------------------------------------------------------
    def _app(self, call: Call) -> App:
        ident = call.params["app"]
        app = self.store.app(ident) or self.store.app_by_name(ident)
        if app is None:
            raise ApiError(404, "not_found", "Couldn't find that app.")
        if not call.principal.operator and app.owner_id != call.principal.id:
            raise ApiError(403, "forbidden", f"You do not have access to the app {app.name}.")
        return app

    def app_json(self, app: App) -> dict[str, Any]:
        stack = {"id": app.stack_id, "name": app.stack_name}
        return {
            "acm": False,
            "archived_at": None,
            "build_stack": stack,
            "buildpack_provided_description": None,
            "created_at": app.created_at,
            "git_url": None,
            "id": app.id,
            "maintenance": app.maintenance,
            "name": app.name,
            "owner": {"email": app.owner_email, "id": app.owner_id},
            "region": {"id": app.region_id, "name": app.region_name},
            "released_at": None,
            "repo_size": 0,
            "slug_size": 0,
            "stack": stack,
            "updated_at": app.updated_at,
            "web_url": web_url(app.name),
        }

    async def _list_apps(self, call: Call) -> Reply:
        visible = [
            self.app_json(app)
            for app in self.store.apps()
            if call.principal.operator or app.owner_id == call.principal.id
        ]
        return self._list(call, visible, APP_RANGES)

    async def _list_user_apps(self, call: Call) -> Reply:
        """``/users/~/apps`` (``heroku apps``): the caller's apps, as ``GET /apps`` shows
        them. A user named by id or email is the caller, or any account for the operator.
        """
        user = call.params["user"]
        me = call.principal
        if user == "~" or user == me.id or user.lower() == me.email.lower():
            return await self._list_apps(call)
        owner: str | None = None
        if me.operator:
            if _is_uuid(user) and any(a.owner_id == user.lower() for a in self.store.apps()):
                owner = user.lower()
            else:
                account = self.store.account_by_email(user)
                owner = account.id if account is not None else None
        if owner is None:
            raise ApiError(404, "not_found", "Couldn't find that user.")
        owned = [self.app_json(app) for app in self.store.apps() if app.owner_id == owner]
        return self._list(call, owned, APP_RANGES)

    async def _list_addons(self, call: Call) -> Reply:
        """An app here has no add-ons: an empty list, once the app is known."""
        self._app(call)
        return self._list(call, [], ADDON_RANGES)

    async def _get_app(self, call: Call) -> Reply:
        return Reply(200, self.app_json(self._app(call)))

    async def _create_app(self, call: Call) -> Reply:
        body = call.body()
        name = body.get("name")
        if name is None:
            name = self._free_name()
        elif not isinstance(name, str) or not APP_NAME.fullmatch(name):
            raise _invalid(APP_NAME_MESSAGE)
        region_id, region_name = _reference(body.get("region"), "region", DEFAULT_REGION)
        stack_id, stack_name = _reference(body.get("stack"), "stack", DEFAULT_STACK)
        if self.store.app_by_name(name) is not None:
            raise _invalid("Name is already taken")
        app_id = str(uuid.uuid4())
        channel = name
        if self.store.app_by_channel(name) is not None:
            # The channel of an app renamed since: this app gets one named by its id.
            channel = app_id
        created_channel = False
        if self.store.channel(channel) is not None:
            # A channel made through the Logplex API: only the operator may adopt it.
            if not call.principal.operator:
                raise _invalid("Name is already taken")
            if not any(t.name == "app" for t in self.store.tokens_of(channel)):
                await self.store.create_token(channel, "app")
        else:
            try:
                await self.store.create_channel(channel, token_names=["app"])
            except ChannelExists:
                raise _invalid("Name is already taken") from None
            created_channel = True
        now = utc_timestamp()
        app = App(
            id=app_id,
            name=name,
            owner_id=call.principal.id,
            owner_email=call.principal.email,
            region_id=region_id,
            region_name=region_name,
            stack_id=stack_id,
            stack_name=stack_name,
            maintenance=False,
            created_at=now,
            updated_at=now,
            channel=channel,
        )
        try:
            await self.store.put_app(app)
        except BaseException as exc:
            if created_channel:
                with trio.CancelScope(shield=True):
                    try:
                        await self.store.delete_channel(channel)
                    except StoreError:
                        log.error("platform: channel %s left without its app record", channel)
            if isinstance(exc, AppNameTaken):
                raise _invalid("Name is already taken") from None
            raise
        log.info("platform: created app %s (%s) for %s", app.name, app.id, app.owner_id)
        return Reply(201, self.app_json(app))

    def _free_name(self) -> str:
        while True:
            name = f"app-{uuid.uuid4().hex[:8]}"
            if self.store.app_by_name(name) is None and self.store.channel(name) is None:
                return name

    async def _update_app(self, call: Call) -> Reply:
        app = self._app(call)
        body = call.body()
        self._precondition(call, self.app_json(app))
        maintenance = body.get("maintenance", app.maintenance)
        if not isinstance(maintenance, bool):
            raise _invalid("maintenance must be true or false.")
        name = body.get("name")
        if name is None:
            name = app.name
        elif name != app.name:
            if not isinstance(name, str) or not APP_NAME.fullmatch(name):
                raise _invalid(APP_NAME_MESSAGE)
            if self.store.app_by_name(name) is not None:
                raise _invalid("Name is already taken")
        if maintenance != app.maintenance or name != app.name:
            old_name = app.name
            # The channel keeps its name: nothing of the data plane changes, so no message
            # is lost and readers, drains and producers carry on.
            app = replace(app, name=name, maintenance=maintenance, updated_at=utc_timestamp())
            try:
                await self.store.put_app(app)
            except AppNameTaken:
                raise _invalid("Name is already taken") from None
            if name != old_name:
                log.info("platform: renamed app %s (%s) to %s", old_name, app.id, name)
        return Reply(200, self.app_json(app))

    async def _delete_app(self, call: Call) -> Reply:
        app = self._app(call)
        current = self.app_json(app)
        self._precondition(call, current)
        # The app, its channel (tokens, drains) and its drains' timestamps: one change.
        await self.store.delete_app(app.id)
        log.info("platform: deleted app %s (%s)", app.name, app.id)
        return Reply(200, current)

    # -- log drains ----------------------------------------------------------------------------
    def drain_json(self, app: App, drain: DrainRecord) -> dict[str, Any]:
        meta = self.store.drain_meta(drain.id)
        return {
            "addon": None,
            "created_at": meta.created_at if meta is not None else app.created_at,
            "id": drain_uuid(drain),
            "token": drain.token,
            "updated_at": meta.updated_at if meta is not None else app.updated_at,
            "url": drain.url,
        }

    def _drains(self, app: App) -> list[DrainRecord]:
        return [d for d in self.store.drains_of(app.channel) if d.url is not None]

    def _drain(self, call: Call, app: App) -> DrainRecord:
        ident = call.params["drain"]
        drains = self._drains(app)
        for drain in drains:
            if ident.lower() == drain_uuid(drain) or ident == drain.url:
                return drain
        try:
            key = parse_drain_url(ident).key
        except InvalidDrainUrl:
            key = None
        for drain in drains:
            try:
                if key is not None and parse_drain_url(drain.url or "").key == key:
                    return drain
            except InvalidDrainUrl:
                continue
        raise ApiError(404, "not_found", "Couldn't find that log drain.")

    async def _list_drains(self, call: Call) -> Reply:
        app = self._app(call)
        items = [self.drain_json(app, d) for d in self._drains(app)]
        return self._list(call, items, DRAIN_RANGES)

    async def _get_drain(self, call: Call) -> Reply:
        app = self._app(call)
        return Reply(200, self.drain_json(app, self._drain(call, app)))

    async def _create_drain(self, call: Call) -> Reply:
        app = self._app(call)
        url = call.body().get("url")
        if not isinstance(url, str):
            raise _invalid("url is required (a string).")
        try:
            parse_drain_url(url)
        except InvalidDrainUrl as exc:
            raise _invalid(f"Url is invalid: {exc}.") from None
        try:
            drain = await self.store.create_drain(
                app.channel, url, max_drains=self._config().max_drains_per_channel
            )
        except ChannelNotFound:
            raise _invalid("The Logplex channel of this app no longer exists.") from None
        except DrainLimitReached:
            raise _invalid("This app has the maximum number of log drains.") from None
        except DrainExists:
            raise _invalid("Url has already been taken.") from None
        now = utc_timestamp()
        await self.store.put_drain_meta(DrainMeta(drain.id, app.id, now, now))
        log.info(
            "platform: added drain %d to app %s url=%s", drain.id, app.name, redact_url(drain.url)
        )
        return Reply(201, self.drain_json(app, drain))

    async def _delete_drain(self, call: Call) -> Reply:
        app = self._app(call)
        drain = self._drain(call, app)
        current = self.drain_json(app, drain)
        self._precondition(call, current)
        if await self.store.delete_drain(app.channel, drain.id) is None:
            raise ApiError(404, "not_found", "Couldn't find that log drain.")
        log.info("platform: removed drain %d from app %s", drain.id, app.name)
        return Reply(200, current)

    # -- log sessions ----------------------------------------------------------------------------
    async def _create_session(self, call: Call) -> Reply:
        app = self._app(call)
        body = call.body()
        dyno, source = body.get("dyno"), body.get("source")
        for key, value in (("dyno", dyno), ("source", source)):
            if value is not None and not isinstance(value, str):
                raise _invalid(f"{key} must be a string.")
        lines = body.get("lines")
        if isinstance(lines, str) and lines.isascii() and lines.isdigit() and len(lines) < 10:
            lines = int(lines)
        if lines is not None and (
            isinstance(lines, bool) or not isinstance(lines, int) or not 0 <= lines < MAX_LINES
        ):
            raise _invalid("lines must be a non-negative number.")
        tail = body.get("tail")
        if tail is not None and not isinstance(tail, bool | int):
            raise _invalid("tail must be true or false.")
        if self.store.channel(app.channel) is None or (
            self.registry is not None and self.registry.channel(app.channel) is None
        ):
            raise _invalid("The Logplex channel of this app no longer exists.")
        session_body: dict[str, Any] = {"channel_id": app.channel}
        if lines is not None:
            session_body["num"] = lines
        if tail:
            session_body["tail"] = True
        if dyno:
            session_body["ps"] = dyno
        if source:
            session_body["source"] = source
        config = self._config()
        if tail:
            # The seed's lifetimes: a connected tail ends after about an hour.
            session_body[MAX_DURATION_KEY] = config.log_session_tail_max
        session = await self.store.create_session(session_body, ttl=config.log_session_ttl)
        now = utc_timestamp()
        return Reply(
            201,
            {
                "created_at": now,
                "dyno": dyno,
                "id": str(uuid.uuid4()),
                "lines": lines,
                "logplex_url": f"{config.public_url}/sessions/{session.id}",
                "source": source,
                "tail": bool(tail),
                "updated_at": now,
            },
        )

    # -- account -----------------------------------------------------------------------------------
    async def _get_account(self, call: Call) -> Reply:
        p = call.principal
        created = p.created_at or None
        return Reply(
            200,
            {
                "allow_tracking": False,
                "beta": False,
                "created_at": created,
                "email": p.email,
                "id": p.id,
                "last_login": None,
                "updated_at": created,
                "verified": False,
            },
        )

    async def _get_rate_limits(self, call: Call) -> Reply:
        # An object, not the reference's one-element list: a list crashes heroku3.
        return Reply(200, {"remaining": self.buckets.remaining(call.principal.id)})


class _Mountable(Protocol):
    config: ApiConfig

    def add_unmatched(
        self, prefixes: tuple[str, ...], answer: Callable[[Request], Awaitable[Response]]
    ) -> None: ...

    def add_error_format(self, prefixes: tuple[str, ...], errors: ErrorFormat) -> None: ...

    def add_route(
        self,
        method: str,
        template: str,
        handler: Callable[[Request, dict[str, str]], Awaitable[Response]],
        *,
        name: str,
        auth: bool = True,
    ) -> None: ...


def mount_platform(
    control_api: _Mountable,
    store: Store,
    registry: ChannelLookup | None = None,
    *,
    clock: Callable[[], float] = trio.current_time,
) -> PlatformApi:
    """Serve the Platform API routes on ``control_api``'s listener.

    Its records (accounts, apps, drain timestamps) are in ``store``, as the channels are.
    The auth key, the public URL (for ``logplex_url``), the drain limit and the session
    lifetime are read from ``control_api.config`` at each request, so the URL the daemon
    learns once it has bound its port is the one handed out.
    """
    api = PlatformApi(store, config=lambda: control_api.config, registry=registry, clock=clock)
    api.mount(control_api.add_route)
    control_api.add_unmatched(PREFIXES, api.unmatched)
    # The server's and the rods' errors on these paths, in this API's format too.
    control_api.add_error_format(PREFIXES, api.error_response)
    return api
