"""HTTP plumbing: plain Request/Response values and an h11-on-trio server for them."""

from .messages import JSON_TYPE, Handler, Request, Response
from .server import ServerLimits, serve_http

__all__ = ["JSON_TYPE", "Handler", "Request", "Response", "ServerLimits", "serve_http"]
