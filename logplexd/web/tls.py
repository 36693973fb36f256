"""The one place a listener's TLS certificate is loaded: ``ServerCertificate``.

The TLS syslog input, the control API and the ``/logs`` input each hold one (from their own
``*_cert``/``*_key`` settings); SIGHUP calls ``reload()`` on each. The context is created
once and stays the listener's: a reload loads the new chain into it, so new connections get
the new certificate and open ones keep their session.
"""

from __future__ import annotations

import logging
import ssl

log = logging.getLogger("logplexd.tls")


def _server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class ServerCertificate:
    """A PEM certificate chain and private key in a server-side TLS context."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = _server_context()
        self.reload()

    def reload(self, cert_file: str | None = None, key_file: str | None = None) -> None:
        """Load the files again (or the ones given) for new connections.

        The pair is first loaded into a scratch context: a missing file, a bad PEM or a key
        that does not match raises ``OSError`` or ``ssl.SSLError`` and leaves the running
        certificate (and ``cert_file``/``key_file``) as they were.
        """
        cert = self.cert_file if cert_file is None else cert_file
        key = self.key_file if key_file is None else key_file
        _server_context().load_cert_chain(cert, key)
        # load_cert_chain on the live context: connections already open keep their session.
        self.context.load_cert_chain(cert, key)
        self.cert_file, self.key_file = cert, key
        log.info("TLS certificate loaded from %s", cert)
