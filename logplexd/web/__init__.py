"""HTTP plumbing shared by every listener: plain ``Request``/``Response`` values, an
h11-on-trio server for them, a method+path ``Router``, and the one parser of credentials
(``credentials.py``: raw key, Basic ``id:password``, ``:token``, Bearer) every listener uses."""

from .credentials import (
    ANY_CHANNEL,
    FULL_API,
    PERMISSIONS,
    CredentialChecker,
    create_credential,
    decode_basic,
    hash_password,
    key_matches,
    parse_basic,
    verify_password,
)
from .messages import JSON_TYPE, Handler, Request, Response
from .routing import Endpoint, Match, MethodNotAllowed, Params, RouteHandler, Router
from .server import ConnectionCount, ServerLimits, serve_http

__all__ = [
    "ANY_CHANNEL",
    "FULL_API",
    "JSON_TYPE",
    "PERMISSIONS",
    "ConnectionCount",
    "CredentialChecker",
    "Endpoint",
    "Handler",
    "Match",
    "MethodNotAllowed",
    "Params",
    "Request",
    "Response",
    "RouteHandler",
    "Router",
    "ServerLimits",
    "create_credential",
    "decode_basic",
    "hash_password",
    "key_matches",
    "parse_basic",
    "serve_http",
    "verify_password",
]
