"""HTTP plumbing shared by every listener: plain ``Request``/``Response`` values, an
h11-on-trio server for them, a method+path ``Router``, and the one parser of credentials
(``credentials.py``: raw key, Basic ``id:password``, ``:token``, Bearer) every listener uses."""

from .credentials import (
    ANY_CHANNEL,
    FULL_API,
    PERMISSIONS,
    Authorization,
    BasicAuth,
    BasicPassword,
    BasicToken,
    BearerToken,
    CredentialChecker,
    InvalidAuthorization,
    RawKey,
    create_credential,
    hash_password,
    key_matches,
    parse_authorization,
    verify_password,
)
from .messages import JSON_TYPE, Handler, InvalidJson, Request, Response, parse_json
from .routing import AddRoute, Endpoint, Match, MethodNotAllowed, Params, RouteHandler, Router
from .server import ConnectionCount, ServerLimits, serve_http, serve_stream

__all__ = [
    "AddRoute",
    "ANY_CHANNEL",
    "FULL_API",
    "JSON_TYPE",
    "PERMISSIONS",
    "Authorization",
    "BasicAuth",
    "BasicPassword",
    "BasicToken",
    "BearerToken",
    "ConnectionCount",
    "CredentialChecker",
    "Endpoint",
    "Handler",
    "InvalidAuthorization",
    "InvalidJson",
    "Match",
    "MethodNotAllowed",
    "Params",
    "RawKey",
    "Request",
    "Response",
    "RouteHandler",
    "Router",
    "ServerLimits",
    "create_credential",
    "hash_password",
    "key_matches",
    "parse_authorization",
    "parse_json",
    "serve_http",
    "serve_stream",
    "verify_password",
]
