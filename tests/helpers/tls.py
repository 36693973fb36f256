"""Server certificates from a test CA (the ``ca`` fixture in tests/conftest.py)."""

from __future__ import annotations

import ssl

import trustme


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server-side context presenting a certificate ``ca`` issued for ``names``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx
