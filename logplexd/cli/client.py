"""``logplexd`` commands that talk to a running daemon's control API (like the seeds' curl
examples): channels, tokens, drains, tail, send, rods.

Where the daemon is: ``--url URL``, else ``$LOGPLEXD_URL``, else ``http://127.0.0.1:8001``.
The key, first found of: ``--key-file FILE``, ``$LOGPLEXD_AUTH_KEY`` / ``$LOGPLEX_AUTH_KEY``,
``~/.netrc`` (``$NETRC``) for the URL's host. It is sent as the original expects it,
``Authorization: Basic <key>``. A ``.netrc`` entry whose login is ``key`` (or empty) holds
the auth key as its password; any other login is a stored credential (``logplexd creds
create``) and is sent as Basic base64 ``login:password``, like ``curl --netrc``.

Output is JSON for objects, one line per item for lists and a table for ``drains status``
(``--json``: the API's JSON). Errors are one line on stderr starting with ``logplexd:`` and
exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import netrc
import os
import socket
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

from ._command import EXIT_FAILURE, EXIT_OK, GROUP_HELP, command

DEFAULT_URL = "http://127.0.0.1:8001"
DEFAULT_LOGS_PORT = 8601
URL_ENV = "LOGPLEXD_URL"
LOGS_URL_ENV = "LOGPLEXD_LOGS_URL"
KEY_ENVS = ("LOGPLEXD_AUTH_KEY", "LOGPLEX_AUTH_KEY")
TIMEOUT = 30.0

GROUP_HELP[("channels",)] = "create, show and delete channels on a running daemon"
GROUP_HELP[("tokens",)] = "create tokens on a running daemon"
GROUP_HELP[("drains",)] = "add, update, remove, list drains and show their status"


class ClientError(Exception):
    """One line for the terminal, without the ``logplexd:`` prefix."""


@dataclass(frozen=True)
class Target:
    url: str
    authorization: str | None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


# --- where and who -----------------------------------------------------------------------------


def _check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"{what} {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def resolve_target(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Target:
    env = dict(os.environ) if environ is None else environ
    url = _check_url(args.url or env.get(URL_ENV) or DEFAULT_URL, "URL")
    return Target(url, _authorization(args, env, urlsplit(url).hostname or ""))


def _authorization(args: argparse.Namespace, env: dict[str, str], host: str) -> str | None:
    key_file = getattr(args, "key_file", None)
    if key_file:
        try:
            key = Path(key_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ClientError(f"cannot read key file {key_file!r}: {exc.strerror}") from None
        if not key:
            raise ClientError(f"key file {key_file!r} is empty")
        return f"Basic {key}"
    for name in KEY_ENVS:
        if env.get(name, "").strip():
            return f"Basic {env[name].strip()}"
    path = env.get("NETRC") or str(Path.home() / ".netrc")
    if os.path.exists(path):
        try:
            entry = netrc.netrc(path).authenticators(host)
        except (netrc.NetrcParseError, OSError) as exc:
            raise ClientError(f"cannot read {path}: {exc}") from None
        if entry is not None:
            login, _, password = entry
            if not password:
                return None
            if login in ("", "key"):
                return f"Basic {password}"
            pair = f"{login}:{password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
    return None


# --- HTTP ----------------------------------------------------------------------------------------


def _connection(url: str, timeout: float | None) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "", parts.port, timeout=timeout)
    path = parts.path or "/"
    return conn, path + (f"?{parts.query}" if parts.query else "")


def _open(
    url: str,
    method: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float | None = TIMEOUT,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn, path = _connection(url, timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        return conn, conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ClientError(f"cannot reach {_origin(url)}: {reason}") from None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def call(target: Target, method: str, path: str, payload: object = None) -> Reply:
    headers = {"Accept": "application/json"}
    if target.authorization:
        headers["Authorization"] = target.authorization
    body = None
    if payload is not None:
        body = json.dumps(payload).encode()
        headers["Content-Type"] = "application/json"
    conn, response = _open(target.url + path, method, body=body, headers=headers)
    try:
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ClientError(f"connection to {_origin(target.url)} failed: {exc}") from None
    finally:
        conn.close()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)


def expect(reply: Reply, *ok: int) -> Reply:
    if reply.status in ok:
        return reply
    data = reply.json()
    message = data.get("error") if isinstance(data, dict) else None
    if not message:
        message = reply.body.decode("utf-8", "replace").strip()[:200] or _phrase(reply.status)
    if reply.status == 401:
        message += " (set LOGPLEX_AUTH_KEY, --key-file or ~/.netrc)"
    raise ClientError(f"{reply.status} {_one_line(message)}")


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _path(*segments: str) -> str:
    return "".join("/" + quote(segment, safe="") for segment in segments)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


# --- arguments -----------------------------------------------------------------------------------


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", metavar="URL", default=None, help=f"API URL (env {URL_ENV}, default {DEFAULT_URL})"
    )
    parser.add_argument(
        "--key-file",
        metavar="FILE",
        default=None,
        help="file holding the auth key, e.g. <data_dir>/auth_key"
        " (else env LOGPLEX_AUTH_KEY, else ~/.netrc)",
    )


def _with(*extra: Any) -> Any:
    def configure(parser: argparse.ArgumentParser) -> None:
        for add in extra:
            add(parser)
        _client_args(parser)

    return configure


def _channel_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("channel", metavar="CHANNEL", help="channel name")


def _run(handler: Any) -> Any:
    """Turn a ClientError into one line on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args, resolve_target(args)))
        except ClientError as exc:
            print(f"logplexd: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except BrokenPipeError:  # `logplexd tail ... | head`
            sys.stderr.close()
            return EXIT_OK

    run.__doc__ = handler.__doc__
    return run


# --- channels -------------------------------------------------------------------------------------


def _channel_create_args(parser: argparse.ArgumentParser) -> None:
    _channel_arg(parser)
    parser.add_argument(
        "--token",
        dest="tokens",
        metavar="NAME",
        action="append",
        default=[],
        help="create a token with this name; repeat for several",
    )


def _channels_create(args: argparse.Namespace, target: Target) -> int:
    path = _path("v3", "channels", args.channel)
    if call(target, "GET", path).status == 200:
        raise ClientError(f"channel {args.channel!r} already exists")
    reply = expect(call(target, "PUT", path, {"tokens": args.tokens}), 200, 201)
    _print_json(reply.json())
    return EXIT_OK


def _channels_show(args: argparse.Namespace, target: Target) -> int:
    reply = expect(call(target, "GET", _path("v3", "channels", args.channel)), 200)
    _print_json(reply.json())
    return EXIT_OK


def _channels_delete(args: argparse.Namespace, target: Target) -> int:
    expect(call(target, "DELETE", _path("v3", "channels", args.channel)), 200, 204)
    print(f"deleted channel {args.channel}")
    return EXIT_OK


command(
    "channels",
    "create",
    help="create a channel (with --token NAME for each token)",
    configure=_with(_channel_create_args),
)(_run(_channels_create))
command(
    "channels", "show", help="show a channel, its tokens and drains", configure=_with(_channel_arg)
)(_run(_channels_show))
command(
    "channels",
    "delete",
    help="delete a channel with its tokens and drains",
    configure=_with(_channel_arg),
)(_run(_channels_delete))


# --- tokens ---------------------------------------------------------------------------------------


def _token_create_args(parser: argparse.ArgumentParser) -> None:
    _channel_arg(parser)
    parser.add_argument("name", metavar="NAME", help="token name (the APP-NAME logs show)")


def _tokens_create(args: argparse.Namespace, target: Target) -> int:
    path = _path("v3", "channels", args.channel, "tokens")
    reply = expect(call(target, "POST", path, {"name": args.name}), 200, 201)
    _print_json(reply.json())
    return EXIT_OK


command(
    "tokens", "create", help="create a token on a channel", configure=_with(_token_create_args)
)(_run(_tokens_create))


# --- drains ---------------------------------------------------------------------------------------


def _drain_id_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("drain_id", metavar="ID", type=int, help="drain id")


def _drain_url_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "drain_url", metavar="URL", help="syslog://, syslog+tls://, http:// or https:// URL"
    )


def _drains_add(args: argparse.Namespace, target: Target) -> int:
    path = _path("v3", "channels", args.channel, "drains")
    reply = expect(call(target, "POST", path, {"url": args.drain_url}), 201)
    _print_json(reply.json())
    return EXIT_OK


def _drains_update(args: argparse.Namespace, target: Target) -> int:
    path = _path("v3", "channels", args.channel, "drains", str(args.drain_id))
    reply = expect(call(target, "PUT", path, {"url": args.drain_url}), 200)
    _print_json(reply.json())
    return EXIT_OK


def _drains_remove(args: argparse.Namespace, target: Target) -> int:
    path = _path("v3", "channels", args.channel, "drains", str(args.drain_id))
    expect(call(target, "DELETE", path), 200, 204)
    print(f"removed drain {args.drain_id} of {args.channel}")
    return EXIT_OK


def _drains_list(args: argparse.Namespace, target: Target) -> int:
    reply = expect(call(target, "GET", _path("v3", "channels", args.channel)), 200)
    data = reply.json() or {}
    for drain in data.get("drains", []):
        print(f"{drain['id']}\t{drain['token']}\t{drain.get('url', '')}")
    return EXIT_OK


command(
    "drains",
    "add",
    help="add a drain to a channel",
    configure=_with(_channel_arg, _drain_url_arg),
)(_run(_drains_add))
command(
    "drains",
    "update",
    help="point a drain at another URL (its buffered messages follow)",
    configure=_with(_channel_arg, _drain_id_arg, _drain_url_arg),
)(_run(_drains_update))
command(
    "drains",
    "remove",
    help="remove a drain",
    configure=_with(_channel_arg, _drain_id_arg),
)(_run(_drains_remove))
command(
    "drains",
    "list",
    help="list a channel's drains: ID, token, URL (tab-separated)",
    configure=_with(_channel_arg),
)(_run(_drains_list))


STATUS_COLUMNS = (
    "ID", "STATE", "BACKLOG", "BYTES", "OLDEST", "DELIVERED", "DROPPED", "RETRIED", "LOST", "URL",
)  # fmt: skip


def _drains_status_args(parser: argparse.ArgumentParser) -> None:
    _channel_arg(parser)
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead")


def _drains_status(args: argparse.Namespace, target: Target) -> int:
    path = _path("v3", "channels", args.channel, "drains", "status")
    data = expect(call(target, "GET", path), 200).json()
    if args.json:
        _print_json(data)
        return EXIT_OK
    drains = data.get("drains", []) if isinstance(data, dict) else []
    if not drains:
        print(f"channel {args.channel} has no drains")
        return EXIT_OK
    print(status_table(drains, datetime.datetime.now(datetime.UTC).timestamp()))
    return EXIT_OK


def status_table(drains: list[dict[str, Any]], now: float) -> str:
    """The drains of ``drains status`` as an aligned table, each drain's last error (if it
    has one) on the line under it."""
    rows: list[tuple[list[str], str | None]] = []
    for drain in drains:
        cells = [
            str(drain.get("id", "")),
            # A drain reading its backlog back from disk says so beside its connection.
            str(drain.get("state", "")) + (",spilling" if drain.get("spilling") else ""),
            _count(drain.get("buffered")),
            "-" if drain.get("buffered_bytes") is None else human_bytes(drain["buffered_bytes"]),
            "-" if drain.get("oldest_age") is None else human_age(drain["oldest_age"]),
            _count(drain.get("delivered")),
            _count(drain.get("dropped")),
            _count(drain.get("retried")),
            _count(drain.get("lost")),
            str(drain.get("url", "")),
        ]
        error = None
        if drain.get("last_error"):
            when = drain.get("last_error_at")
            if isinstance(when, int | float):
                stamp = datetime.datetime.fromtimestamp(when, datetime.UTC)
                ago = human_age(max(0.0, now - when))
                error = f"last error {stamp:%Y-%m-%d %H:%M:%S}Z ({ago} ago): {drain['last_error']}"
            else:
                error = f"last error: {drain['last_error']}"
        rows.append((cells, error))
    widths = [len(name) for name in STATUS_COLUMNS]
    for cells, _ in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]

    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(STATUS_COLUMNS)]
    for cells, error in rows:
        out.append(line(cells))
        if error is not None:
            out.append("    " + _one_line(error))
    return "\n".join(out)


def _count(value: object) -> str:
    return "-" if value is None else str(value)


def human_bytes(n: int) -> str:
    """1023 -> ``1023B``, 1536 -> ``1.5KiB``, 5 << 20 -> ``5.0MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    """42.5 -> ``42s``, 312 -> ``5m12s``, 11100 -> ``3h05m``, 187200 -> ``2d04h``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


command(
    "drains",
    "status",
    help="show each drain's state, last error, counters and backlog (--json: the API's JSON)",
    configure=_with(_drains_status_args),
)(_run(_drains_status))


# --- tail -----------------------------------------------------------------------------------------

COLOURS = ("36", "32", "33", "35", "34", "31", "96", "92", "93", "95")


def colour_line(line: str) -> str:
    """``TIME APP[PROCID]: MSG`` with the time dimmed and ``APP[PROCID]`` coloured per
    process, like ``heroku logs``; other lines are left alone."""
    time_part, sep, rest = line.partition(" ")
    source, colon, message = rest.partition(": ")
    if not sep or not colon or "[" not in source:
        return line
    colour = COLOURS[zlib.crc32(source.encode()) % len(COLOURS)]
    return f"\x1b[2m{time_part}\x1b[0m \x1b[{colour}m{source}:\x1b[0m {message}"


def _tail_args(parser: argparse.ArgumentParser) -> None:
    _channel_arg(parser)
    parser.add_argument("--ps", metavar="PROCESS", help="only this process (web matches web.1)")
    parser.add_argument("--source", metavar="APP", help="only this source (APP-NAME)")
    parser.add_argument(
        "-n", "--num", type=int, default=100, metavar="N", help="lines of history (default 100)"
    )
    parser.add_argument(
        "-f", "--follow", "--tail", action="store_true", help="keep following new lines"
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output (default: on a terminal, unless NO_COLOR is set)",
    )


def _session_lines(url: str, follow: bool) -> Iterator[bytes]:
    conn, response = _open(
        url, "GET", headers={"Accept": "*/*"}, timeout=None if follow else TIMEOUT
    )
    try:
        if response.status != 200:
            expect(Reply(response.status, {}, response.read()), 200)
        while True:
            try:
                line = response.readline()
            except (OSError, http.client.HTTPException) as exc:
                raise ClientError(f"tail ended: {exc}") from None
            if not line:
                return
            yield line
    finally:
        conn.close()


def _tail(args: argparse.Namespace, target: Target, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    if args.num < 0:
        raise ClientError("-n must not be negative")
    body: dict[str, object] = {"channel_id": args.channel, "num": str(args.num)}
    if args.follow:
        body["tail"] = True
    if args.ps:
        body["ps"] = args.ps
    if args.source:
        body["source"] = args.source
    reply = expect(call(target, "POST", "/v3/sessions", body), 200, 201)
    data = reply.json()
    url = data.get("url") if isinstance(data, dict) else None
    if not isinstance(url, str):
        raise ClientError("the daemon returned no session URL")
    colour = args.color == "always" or (
        args.color == "auto" and out.isatty() and not os.environ.get("NO_COLOR")
    )
    for raw in _session_lines(url, args.follow):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        out.write((colour_line(line) if colour else line) + "\n")
        out.flush()
    return EXIT_OK


command(
    "tail",
    help="show a channel's recent lines, and with --follow new ones (like heroku logs --tail)",
    configure=_with(_tail_args),
)(_run(_tail))


# --- send -----------------------------------------------------------------------------------------


def _send_args(parser: argparse.ArgumentParser) -> None:
    _channel_arg(parser)
    parser.add_argument("message", metavar="MESSAGE", help="the message text")
    parser.add_argument(
        "--token", metavar="NAME", help="send as this token of the channel (default: the first)"
    )
    parser.add_argument("--ps", default="cli", metavar="PROCID", help="PROCID (default cli)")
    parser.add_argument(
        "--logs-url",
        metavar="URL",
        default=None,
        help=f"HTTP log input URL (env {LOGS_URL_ENV}, default the API host, port"
        f" {DEFAULT_LOGS_PORT})",
    )


def syslog_frame(token: str, procid: str, message: str, *, host: str | None = None) -> bytes:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    hostname = (host or socket.gethostname() or "-").replace(" ", "")[:255]
    text = f"<134>1 {now} {hostname} {token} {procid} - - {message}".encode()
    return b"%d %s" % (len(text), text)


def _logs_url(args: argparse.Namespace, target: Target) -> str:
    explicit = args.logs_url or os.environ.get(LOGS_URL_ENV)
    if explicit:
        base = _check_url(explicit, "logs URL")
    else:
        parts = urlsplit(target.url)
        host = parts.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        base = f"{parts.scheme}://{host}:{DEFAULT_LOGS_PORT}"
    return base if base.endswith("/logs") else base + "/logs"


def _send(args: argparse.Namespace, target: Target) -> int:
    reply = expect(call(target, "GET", _path("v3", "channels", args.channel)), 200)
    tokens: dict[str, str] = (reply.json() or {}).get("tokens", {})
    if not tokens:
        raise ClientError(f"channel {args.channel!r} has no tokens; create one with tokens create")
    if args.token is not None:
        if args.token not in tokens:
            raise ClientError(f"channel {args.channel!r} has no token named {args.token!r}")
        token = tokens[args.token]
    else:
        token = tokens[sorted(tokens)[0]]
    message = " ".join(args.message.splitlines())
    frame = syslog_frame(token, args.ps, message)
    auth = base64.b64encode(f"token:{token}".encode()).decode("ascii")
    url = _logs_url(args, target)
    headers = {
        "Content-Type": "application/logplex-1",
        "Logplex-Msg-Count": "1",
        "Authorization": f"Basic {auth}",
    }
    conn, response = _open(url, "POST", body=frame, headers=headers)
    try:
        data = response.read()
    finally:
        conn.close()
    if response.status != 204:
        reason = data.decode("utf-8", "replace").strip() or response.reason
        raise ClientError(f"{response.status} {_one_line(reason)} (from {url})")
    print(f"sent 1 message to {args.channel}")
    return EXIT_OK


command(
    "send", help="send one log line to a channel (for quick tests)", configure=_with(_send_args)
)(_run(_send))


# --- rods -----------------------------------------------------------------------------------------


def _rods_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "changes",
        metavar="NAME=VALUE",
        nargs="*",
        help="api_status=normal|read_only|disabled, deny_tail_sessions=true|false,"
        " deny_drain_forwarding=..., deny_logs_ingress=..., kill_tail_sessions=true",
    )


def _rods(args: argparse.Namespace, target: Target) -> int:
    if not args.changes:
        reply = expect(call(target, "GET", "/admin/rods"), 200)
    else:
        changes: dict[str, str] = {}
        for item in args.changes:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise ClientError(f"expected NAME=VALUE, got {item!r}")
            changes[name.strip()] = value.strip()
        reply = expect(call(target, "PUT", "/admin/rods", changes), 200)
    for name, value in (reply.json() or {}).items():
        shown = str(value).lower() if isinstance(value, bool) else value
        print(f"{name} = {shown}")
    return EXIT_OK


command(
    "rods",
    help="show the control rods, or set them: logplexd rods api_status=read_only",
    configure=_with(_rods_args),
)(_run(_rods))
