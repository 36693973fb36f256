"""Opening a drain's connection: TCP, then TLS when the target asks for it."""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass, field

import trio

from ..store import DrainTarget


@dataclass
class TlsContexts:
    """One verifying and one non-verifying context, built once and shared by every drain."""

    # PEM bundle of trusted CAs; None = the system store.
    ca_file: str | None = None
    _verifying: ssl.SSLContext | None = field(default=None, repr=False)
    _insecure: ssl.SSLContext | None = field(default=None, repr=False)

    def for_target(self, target: DrainTarget) -> ssl.SSLContext:
        if target.insecure:
            if self._insecure is None:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                self._insecure = ctx
            return self._insecure
        if self._verifying is None:
            # Hostname checking and CERT_REQUIRED are the defaults of this context.
            self._verifying = ssl.create_default_context(cafile=self.ca_file)
        return self._verifying


DRAIN_SEND_BUFFER = 4 * 1024 * 1024


@functools.lru_cache(maxsize=4096)
def _numeric_family(host: str) -> int | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


async def _open_tcp(host: str, port: int) -> trio.SocketStream:
    """A TCP connection; a literal address connects directly. ``trio.open_tcp_stream``
    (resolution, happy eyeballs: a nursery and timers per attempt) cost ~0.7 ms of CPU per
    connect, most of the CPU of 1,000 drains connecting at once (py-spy, bench/e2e's
    warm-up), and a literal address has nothing to resolve or race. Nor does it go
    through ``trio.socket``'s ``connect`` (an address resolution and a raised
    ``BlockingIOError`` per connect): ``connect_ex``, then wait until writable."""
    family = _numeric_family(host)
    if family is None:
        return await trio.open_tcp_stream(host, port)
    raw = socket.socket(family, socket.SOCK_STREAM)
    try:
        raw.setblocking(False)
        code = raw.connect_ex((host, port))
        if code == errno.EINPROGRESS:
            await trio.lowlevel.wait_writable(raw)
            code = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            # Worded as trio's own failure (drain status and logs read the same either way).
            raise ConnectionError(code, f"connecting to {host}:{port} failed: {os.strerror(code)}")
    except BaseException:
        trio.lowlevel.notify_closing(raw)
        raw.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(raw))


async def open_drain_stream(
    target: DrainTarget, tls: TlsContexts, *, connect_timeout: float
) -> trio.abc.Stream:
    """Connect (and for TLS, complete the handshake) within ``connect_timeout`` seconds.

    A certificate that fails verification raises here, so such a drain never counts as
    connected and keeps retrying with backoff.
    """
    with trio.fail_after(connect_timeout):
        tcp = await _open_tcp(target.host, target.port)
        try:
            # Notices a peer that vanished without a FIN on a long-idle connection.
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            # A drain gets one write per scheduling round while every busy input gets a read:
            # a large kernel buffer lets that one write take a whole round's worth.
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, DRAIN_SEND_BUFFER)
            if not target.uses_tls:
                return tcp
            stream = trio.SSLStream(
                tcp,
                tls.for_target(target),
                server_hostname=target.host,
                # HTTPS servers commonly close without close_notify; that is not an error.
                https_compatible=target.is_http,
            )
            await stream.do_handshake()
            return stream
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
