"""systemd integration without libsystemd: the notify protocol and socket activation.

Notify (``sd_notify(3)``): newline-separated ``KEY=VALUE`` assignments in one datagram to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). Without ``$NOTIFY_SOCKET`` every call is a no-op.

Watchdog: with ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``);
``WATCHDOG=1`` must then come at least that often. The pings are sent by a task on the trio
loop every half period, so a loop that hangs stops pinging and systemd restarts the service.

Socket activation (``sd_listen_fds(3)``): systemd passes listening sockets as fds 3.. with
``$LISTEN_FDS``, ``$LISTEN_PID`` and ``$LISTEN_FDNAMES``. Each socket goes to the listener
its name says (``api``, ``logs``, ``syslog``, ``syslog-tls``); sockets with another name (a
``.socket`` unit without ``FileDescriptorName=`` names them all after the unit) go, in the
order they are passed, to the roles no named socket took, in that order. So a single
``logplexd.socket`` with three ``ListenStream=`` lines (api, logs, syslog, in this order)
works as is.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

import trio

log = logging.getLogger("logplexd.daemon.systemd")

SD_LISTEN_FDS_START = 3
ROLES = ("api", "logs", "syslog", "syslog-tls")


class ActivationError(OSError):
    """The sockets systemd passed cannot be used; one line, like a bind error."""


class Notifier:
    """Sends notify messages; every method is a cheap no-op when not run by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _notify_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = watchdog_interval(env)
        self._sock: socket.socket | None = None
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False if not sent (never raises)."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            # systemd gone or its queue full: nothing the daemon can do but go on.
            log.debug("sd_notify failed: %s", exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def run_watchdog(self) -> None:
        """Ping every half ``WatchdogSec``; returns at once when no watchdog is set."""
        interval = self.watchdog_interval
        if interval is None or self.address is None:
            return
        log.info("systemd watchdog: pinging every %.3f s", interval)
        while True:
            self.watchdog()
            await trio.sleep(interval)


def _notify_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # vsock: and other forms are not used on a host with systemd's default setup.
    log.warning("NOTIFY_SOCKET %r is not a unix socket path; notifications disabled", value)
    return None


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


def _one_line(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


def listen_fds(
    environ: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> dict[str, list[socket.socket]]:
    """The listening sockets systemd passed, by role (``api``, ``logs``, ...).

    Empty when the process was not socket-activated. With ``unset`` the ``LISTEN_*``
    variables are removed so that no child process takes the sockets for its own.
    """
    env = os.environ if environ is None else environ
    count_text, pid_text = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    names_text = env.get("LISTEN_FDNAMES", "")
    if unset:
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if not count_text:
        return {}
    if not count_text.isdigit():
        raise ActivationError(f"LISTEN_FDS={count_text!r} is not a number")
    if pid_text and (not pid_text.isdigit() or int(pid_text) != os.getpid()):
        return {}  # meant for another process (our parent passed its environment on)
    count = int(count_text)
    names = names_text.split(":") if names_text else []
    sockets: list[tuple[str, socket.socket]] = []
    for index in range(count):
        fd = SD_LISTEN_FDS_START + index
        os.set_inheritable(fd, False)
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ActivationError(f"inherited fd {fd} is not a socket: {exc.strerror}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            sock.detach()
            raise ActivationError(f"inherited fd {fd} is not a listening stream socket")
        sockets.append((names[index] if index < len(names) else "", sock))
    return assign_roles(sockets)


def assign_roles(sockets: list[tuple[str, socket.socket]]) -> dict[str, list[socket.socket]]:
    by_role: dict[str, list[socket.socket]] = {}
    unnamed: list[socket.socket] = []
    for name, sock in sockets:
        if name in ROLES:
            by_role.setdefault(name, []).append(sock)
        else:
            unnamed.append(sock)
    free = [role for role in ROLES if role not in by_role]
    if len(unnamed) > len(free):
        raise ActivationError(
            f"{len(sockets)} sockets passed by systemd, more than the listeners"
            f" ({', '.join(ROLES)}); name them with FileDescriptorName="
        )
    for role, sock in zip(free, unnamed, strict=False):
        by_role[role] = [sock]
    for role, socks in by_role.items():
        where = ", ".join(_describe(s) for s in socks)
        log.info("socket activation: %s listener on %s", role, where)
    return by_role


def _describe(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(name)


def trio_listeners(sockets: list[socket.socket]) -> list[trio.SocketListener]:
    return [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]


__all__ = [
    "ROLES",
    "ActivationError",
    "Notifier",
    "assign_roles",
    "listen_fds",
    "trio_listeners",
    "watchdog_interval",
]
