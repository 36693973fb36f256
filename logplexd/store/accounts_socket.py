"""``logplexd accounts`` through a running daemon: a Unix socket in its data dir.

A running daemon holds its embedded store (the data dir's lock) and is the only process
that may write it. So that ``logplexd accounts create|list|delete`` work while it runs, the
daemon serves those three operations on ``<data_dir>/accounts.sock`` and carries them out
on its own store, whichever it is (embedded, Redis or Redis Cluster): the answer comes once
the change is durable there, and the account works at once. Without a daemon answering
there, the command opens the store itself.

Only the data dir's owner gets in: the socket is mode 0600 and a peer whose uid is neither
the daemon's nor root's is refused (``SO_PEERCRED``). One request per connection, one JSON
line each way::

    {"op": "create", "email": E} -> {"ok": true, "id": ID, "email": E, "token": TOKEN}
    {"op": "list"}               -> {"ok": true, "accounts": [{"id", "email", "created_at"}]}
    {"op": "delete", "email": E} -> {"ok": true, "deleted": true|false}
    any failure                  -> {"ok": false, "error": "exists"|"unavailable"|"bad_request",
                                     "message": TEXT}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import trio

from .base import Store
from .model import AccountExists, StoreError, StoreUnavailable

log = logging.getLogger("logplexd.store")

SOCKET_FILE = "accounts.sock"
MAX_REQUEST = 64 * 1024
# A client that has not sent its request within this is dropped.
REQUEST_TIMEOUT = 5.0
# How long a client waits for the daemon's answer (a write to Redis is bounded by 5 s).
CLIENT_TIMEOUT = 15.0
# AF_UNIX paths are limited to 107 bytes; a longer one is reached through /proc.
_MAX_PATH = 100


@contextlib.contextmanager
def _reachable(path: str) -> Iterator[str]:
    """``path``, or an equivalent short enough for a Unix socket address."""
    if len(os.fsencode(path)) <= _MAX_PATH:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def _socket_path(data_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.path.abspath(os.fspath(data_dir)), SOCKET_FILE)


def _peer_allowed(sock: Any) -> bool:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # pragma: no cover - Linux has it; the mode 0600 still holds
        return True
    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", raw)
    return uid in (0, os.getuid())


async def answer_accounts_request(store: Store, request: Any) -> dict[str, Any]:
    """The answer to one request of the protocol above, carried out on ``store`` (the
    daemon's, or one ``logplexd accounts`` opened itself: the same answers either way)."""
    if not isinstance(request, dict) or request.get("op") not in ("create", "list", "delete"):
        return {"ok": False, "error": "bad_request", "message": "unknown request"}
    op = request["op"]
    if op == "list":
        accounts = sorted(store.accounts(), key=lambda a: a.email)
        rows = [{"id": a.id, "email": a.email, "created_at": a.created_at} for a in accounts]
        return {"ok": True, "accounts": rows}
    email = request.get("email")
    if not isinstance(email, str) or not email:
        return {"ok": False, "error": "bad_request", "message": "no email"}
    try:
        if op == "create":
            account, token = await store.create_account(email)
            return {"ok": True, "id": account.id, "email": account.email, "token": token}
        return {"ok": True, "deleted": await store.delete_account(email)}
    except AccountExists:
        return {"ok": False, "error": "exists", "message": f"an account with email {email} exists"}
    except StoreUnavailable as exc:
        return {"ok": False, "error": "unavailable", "message": f"the store is unavailable: {exc}"}
    except StoreError as exc:
        return {"ok": False, "error": "unavailable", "message": f"the store refused: {exc}"}


async def _serve_one(store: Store, stream: trio.SocketStream) -> None:
    async with stream:
        if not _peer_allowed(stream.socket):
            log.warning("accounts socket: refused a peer of another user")
            return
        data = b""
        with trio.move_on_after(REQUEST_TIMEOUT):
            while b"\n" not in data and len(data) <= MAX_REQUEST:
                chunk = await stream.receive_some(MAX_REQUEST)
                if not chunk:
                    break
                data += chunk
        try:
            request = json.loads(data.split(b"\n", 1)[0])
        except ValueError:
            request = None
        reply = await answer_accounts_request(store, request)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps(reply).encode() + b"\n")


async def serve_accounts_socket(
    store: Store,
    data_dir: str | os.PathLike[str],
    *,
    task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``<data_dir>/accounts.sock`` until cancelled; reports its path once it listens.
    The daemon holds the data dir, so a socket file left there by a crash is replaced. A
    socket that cannot be made is logged and reported as None: the daemon runs without it
    (``logplexd accounts`` then needs a store URL, or the daemon stopped)."""
    path = _socket_path(data_dir)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # In Redis mode nothing else may have made the data dir.
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with _reachable(path) as address:
            await sock.bind(address)
        os.chmod(path, 0o600)
        identity = os.stat(path).st_ino
        sock.listen(16)
    except OSError as exc:
        sock.close()
        log.warning("accounts socket %s not served: %s", path, exc)
        task_status.started(None)
        return
    except BaseException:
        sock.close()
        raise
    try:
        listener = trio.SocketListener(sock)

        async def handle(stream: trio.SocketStream) -> None:
            try:
                await _serve_one(store, stream)
            except (OSError, trio.BrokenResourceError) as exc:
                log.warning("accounts socket: %s", exc)

        task_status.started(path)
        await trio.serve_listeners(handle, [listener])
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == identity:
                os.unlink(path)


def call_accounts_socket(
    data_dir: str | os.PathLike[str], request: dict[str, Any], *, timeout: float = CLIENT_TIMEOUT
) -> dict[str, Any] | None:
    """Send ``request`` to the daemon running on ``data_dir``; its answer, or None when no
    daemon listens there. Raises OSError when one does but the exchange fails."""
    path = _socket_path(data_dir)
    if not os.path.exists(path):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _reachable(path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            return None  # a socket file left by a daemon that is gone
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    try:
        reply = json.loads(data)
    except ValueError:
        raise OSError("the daemon's answer is not JSON") from None
    if not isinstance(reply, dict):
        raise OSError("the daemon's answer is not an object")
    return reply


__all__ = [
    "SOCKET_FILE",
    "answer_accounts_request",
    "call_accounts_socket",
    "serve_accounts_socket",
]
