"""HTTP plumbing shared by every listener: plain ``Request``/``Response`` values, an
h11-on-trio server for them (HTTP or HTTPS), a method+path ``Router``, the one parser of
credentials (``credentials.py``: raw key, Basic ``id:password``, ``:token``, Bearer) every
listener uses, and the one loader of a listener's TLS certificate (``tls.py``)."""

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
from .messages import (
    JSON_TYPE,
    DirectSink,
    ErrorFormat,
    Handler,
    InvalidJson,
    Request,
    Response,
    json_error,
    parse_json,
)
from .routing import AddRoute, Endpoint, Match, MethodNotAllowed, Params, RouteHandler, Router
from .server import ConnectionCount, ServerLimits, serve_http, serve_stream
from .tls import ServerCertificate

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
    "DirectSink",
    "Endpoint",
    "ErrorFormat",
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
    "ServerCertificate",
    "ServerLimits",
    "create_credential",
    "hash_password",
    "json_error",
    "key_matches",
    "parse_authorization",
    "parse_json",
    "serve_http",
    "serve_stream",
    "verify_password",
]
