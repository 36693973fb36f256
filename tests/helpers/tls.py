"""Server certificates from a test CA (the ``ca`` fixture in tests/conftest.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server-side context presenting a certificate ``ca`` issued for ``names``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def write_certificate(ca: trustme.CA, cert_file: Path, key_file: Path, *names: str) -> None:
    """A certificate ``ca`` issued for ``names``, written as PEM files (chain, key)."""
    leaf = ca.issue_cert(*names)
    leaf.private_key_pem.write_to_path(str(key_file))
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)


def write_ca(ca: trustme.CA, path: Path) -> Path:
    """The CA's certificate as a PEM file (for curl --cacert, REQUESTS_CA_BUNDLE)."""
    ca.cert_pem.write_to_path(str(path))
    return path


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context trusting ``ca`` (and nothing else)."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx
