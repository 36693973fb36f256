"""HTTPS on the control API and on the ``/logs`` input (issue 20): certificates from a
trustme CA, requests at the h11 level, the real curl and heroku3, SIGHUP reload, and what a
bad handshake or plain HTTP on a TLS port does (one log line, the connection closed, the
listener still serving)."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from logplexd.daemon import BoundPorts, Daemon
from logplexd.web import ConnectionCount, Request, Response, ServerCertificate, serve_http
from tests.helpers import ROOT
from tests.helpers.curl import curl
from tests.helpers.daemon import KEY, settings_for
from tests.helpers.http import basic_auth, request
from tests.helpers.net import read_until_eof
from tests.helpers.peers import needs_curl
from tests.helpers.syslog import frame
from tests.helpers.tls import client_context, write_ca, write_certificate
from tests.helpers.wait import wait_until

SHORT = 0.2
NAMES = ("127.0.0.1", "localhost")


@dataclass
class Files:
    api_cert: Path
    api_key: Path
    logs_cert: Path
    logs_key: Path
    ca: Path


@pytest.fixture
def files(ca: trustme.CA, tmp_path: Path) -> Files:
    """One certificate for the API, another for /logs, and the CA as a PEM file."""
    found = Files(
        tmp_path / "api.pem",
        tmp_path / "api.key",
        tmp_path / "logs.pem",
        tmp_path / "logs.key",
        write_ca(ca, tmp_path / "ca.pem"),
    )
    write_certificate(ca, found.api_cert, found.api_key, *NAMES)
    write_certificate(ca, found.logs_cert, found.logs_key, *NAMES)
    return found


@dataclass
class Running:
    daemon: Daemon
    ports: BoundPorts


@pytest.fixture
async def running(tmp_path: Path, files: Files) -> AsyncIterator[Running]:
    settings = settings_for(
        tmp_path,
        api_tls_cert=files.api_cert,
        api_tls_key=files.api_key,
        logs_tls_cert=files.logs_cert,
        logs_tls_key=files.logs_key,
    )
    daemon = Daemon(settings, environ={}, reload_settings=lambda old: old)
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        yield Running(daemon, ports)
        nursery.cancel_scope.cancel()


# -- the daemon over https ----------------------------------------------------------------------


async def test_api_and_logs_speak_https_and_session_urls_say_so(
    running: Running, ca: trustme.CA
) -> None:
    tls, ports = client_context(ca), running.ports
    status, _, body = await request(
        ports.api, "PUT", "/v3/channels/web", body={"tokens": ["app"]}, tls=tls
    )
    assert status == 201, body
    token = json.loads(body)["tokens"]["app"]
    status, _, body = await request(
        ports.logs,
        "POST",
        "/logs",
        body=frame(token, "over https", ps="web.1"),
        headers=[
            ("Content-Type", "application/logplex-1"),
            ("Authorization", basic_auth("token", token)),
        ],
        auth=None,
        tls=tls,
    )
    assert status == 204, body

    # A Logplex v3 session: its URL is the API's, with https.
    status, _, body = await request(
        ports.api, "POST", "/v3/sessions", body={"channel_id": "web"}, tls=tls
    )
    assert status == 201, body
    url = json.loads(body)["url"]
    origin = f"https://127.0.0.1:{ports.api}"
    prefix = f"{origin}/sessions/"
    assert url.startswith(prefix)
    status, _, body = await request(ports.api, "GET", url[len(origin) :], tls=tls)
    assert status == 200 and body.endswith(b" app[web.1]: over https\n")

    # A Platform log-session: logplex_url is https too.
    v3 = [("Accept", "application/vnd.heroku+json; version=3")]
    status, _, body = await request(
        ports.api, "POST", "/apps", body={"name": "tls-app"}, headers=v3, tls=tls
    )
    assert status == 201, body
    status, _, body = await request(
        ports.api, "POST", "/apps/tls-app/log-sessions", body={"lines": 5}, headers=v3, tls=tls
    )
    assert status == 201, body
    assert json.loads(body)["logplex_url"].startswith(prefix)


async def test_plain_http_and_bad_handshakes_are_closed_and_logged(
    running: Running, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="logplexd.web")
    tls, ports = client_context(ca), running.ports
    for port in (ports.api, ports.logs):
        # Plain HTTP: told in plain HTTP, then closed.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await read_until_eof(stream)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert answer.endswith(b"This port speaks HTTPS only: use https://.\n")
        # Bytes that are not TLS at all: closed without a word.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"\x16\x03\x01\x00\x05hello")
        assert await read_until_eof(stream) == b""
        # A client that does not trust the certificate gives up: the server logs it.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        untrusting = trio.SSLStream(stream, ssl.create_default_context(), server_hostname="x")
        with pytest.raises(trio.BrokenResourceError):
            await untrusting.do_handshake()
        await trio.aclose_forcefully(untrusting)
        # The listener still serves.
        status, _, body = await request(port, "GET", "/healthcheck", tls=tls)
        assert status == 200, body
    await wait_until(lambda: running.daemon.connections["api"].open == 0)
    await wait_until(lambda: running.daemon.connections["logs"].open == 0)
    text = caplog.text
    assert text.count("http: plain HTTP on the TLS port closed") == 2
    # Not TLS, and a client refusing the certificate: the reason (OpenSSL's) is in the line.
    failed = [line for line in text.splitlines() if "http: TLS handshake failed" in line]
    assert len(failed) == 4
    assert all(line.split("): ", 1)[1].isupper() for line in failed), failed


async def test_reload_picks_up_new_certificates_for_both_listeners(
    files: Files, running: Running, ca: trustme.CA
) -> None:
    ports, daemon = running.ports, running.daemon
    client = client_context(ca)

    async def handshake(port: int, name: str) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(stream, client, server_hostname=name)
        try:
            await tls.do_handshake()
        finally:
            await trio.aclose_forcefully(tls)

    for port in (ports.api, ports.logs):
        await handshake(port, "127.0.0.1")
        with pytest.raises(trio.BrokenResourceError):
            await handshake(port, "renewed.example")
    write_certificate(ca, files.api_cert, files.api_key, "renewed.example")
    write_certificate(ca, files.logs_cert, files.logs_key, "renewed.example")
    assert daemon.reload() == []
    for port in (ports.api, ports.logs):
        await handshake(port, "renewed.example")  # new connections get the new certificate
    # A broken key is refused; the running certificates stay.
    files.api_key.write_text("not a key")
    files.logs_key.write_text("not a key")
    assert daemon.reload() == []
    for port in (ports.api, ports.logs):
        await handshake(port, "renewed.example")


async def test_turning_https_on_at_reload_needs_a_restart(tmp_path: Path, files: Files) -> None:
    settings = settings_for(tmp_path)
    wanted = settings_for(tmp_path, api_tls_cert=files.api_cert, api_tls_key=files.api_key)
    daemon = Daemon(settings, environ={}, reload_settings=lambda old: wanted)
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        assert daemon.reload() == ["api_tls_cert", "api_tls_key"]
        assert daemon.settings.api_tls_cert is None
        status, _, _ = await request(ports.api, "GET", "/healthcheck")  # still plain HTTP
        assert status == 200
        nursery.cancel_scope.cancel()


# -- the server alone ---------------------------------------------------------------------------


async def hello(request: Request) -> Response:
    return Response.text(200, f"hello {request.method} {request.target}")


@pytest.fixture
async def tls_server(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> tuple[int, ConnectionCount]:
    cert, key = tmp_path / "s.pem", tmp_path / "s.key"
    write_certificate(ca, cert, key, *NAMES)
    certificate = ServerCertificate(str(cert), str(key))
    count = ConnectionCount()
    port = await nursery.start(
        functools.partial(
            serve_http,
            hello,
            "127.0.0.1",
            0,
            max_body=64,
            header_timeout=SHORT,
            connections=count,
            tls=certificate.context,
        )
    )
    return port, count


async def test_keep_alive_and_errors_over_tls(
    tls_server: tuple[int, ConnectionCount], ca: trustme.CA
) -> None:
    port, count = tls_server
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(raw, client_context(ca), server_hostname="127.0.0.1")
    await stream.send_all(
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    data = b""
    with trio.fail_after(5):
        while data.count(b"hello GET") < 2:
            data += await stream.receive_some(65536)
    assert b"hello GET /one" in data and b"hello GET /two" in data
    # An error response closes a TLS connection too (no half-close on TLS: the server reads
    # until the client goes, within the linger time).
    await stream.send_all(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    answer = await read_until_eof(stream)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"Request body too large"' in answer
    await trio.aclose_forcefully(stream)
    await wait_until(lambda: count.open == 0)


async def test_silent_tls_client_is_cut_at_the_head_deadline(
    tls_server: tuple[int, ConnectionCount], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="logplexd.web")
    port, count = tls_server
    stream = await trio.open_tcp_stream("127.0.0.1", port)  # never starts its handshake
    assert await read_until_eof(stream, limit=SHORT * 20) == b""
    await wait_until(lambda: count.open == 0)
    assert "http: TLS handshake timed out" in caplog.text


async def test_many_bad_handshakes_leave_no_connection_behind(
    tls_server: tuple[int, ConnectionCount], ca: trustme.CA
) -> None:
    port, count = tls_server
    for payload in (b"GET / HTTP/1.1\r\n\r\n", b"PATCH / HTTP/1.1\r\n\r\n", b"\x00" * 64, b""):
        for _ in range(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            if payload:
                await stream.send_all(payload)
            await stream.aclose()
    await wait_until(lambda: count.total >= 20 and count.open == 0)
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(raw, client_context(ca), server_hostname="localhost")
    await stream.send_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"hello GET /ok" in await read_until_eof(stream)


# -- real clients ---------------------------------------------------------------------------------


@pytest.mark.integration
@needs_curl
async def test_curl_with_cacert(running: Running, files: Files) -> None:
    ports, cacert = running.ports, ["--cacert", str(files.ca)]
    auth = ["-H", f"Authorization: Basic {KEY}", "-H", "Content-Type: application/json"]
    api = f"https://127.0.0.1:{ports.api}"
    status, _, body = await curl(
        *cacert, *auth, "-X", "PUT", "-d", '{"tokens":["app"]}', f"{api}/v3/channels/curl"
    )
    assert status == 201, body
    token = json.loads(body)["tokens"]["app"]
    status, _, body = await curl(
        *cacert,
        "-u",
        f"token:{token}",
        "-H",
        "Content-Type: application/logplex-1",
        "--data-binary",
        frame(token, "from curl", ps="web.1").decode(),
        f"https://localhost:{ports.logs}/logs",
    )
    assert status == 204, body
    status, _, body = await curl(
        *cacert, *auth, "-X", "POST", "-d", '{"channel_id":"curl"}', f"{api}/v3/sessions"
    )
    assert status == 201, body
    url = json.loads(body)["url"]
    assert url.startswith(f"{api}/sessions/")
    status, _, body = await curl(*cacert, url)
    assert status == 200 and body.endswith(b" app[web.1]: from curl\n")
    # Without the CA, curl refuses the certificate; the daemon carries on.
    done = await trio.run_process(
        ["curl", "-sS", f"{api}/healthcheck"], capture_stdout=True, capture_stderr=True, check=False
    )
    assert done.returncode == 60  # CURLE_PEER_FAILED_VERIFICATION
    # curl speaking plain HTTP to the HTTPS port is told so.
    status, _, body = await curl(f"http://127.0.0.1:{ports.logs}/logs")
    assert (status, body) == (400, b"This port speaks HTTPS only: use https://.\n")
    status, _, body = await curl(*cacert, "-H", f"Authorization: Basic {KEY}", f"{api}/healthcheck")
    assert status == 200, body


@pytest.mark.integration
# heroku3's get_log reads logplex_url with certificate checks off (its own code, not ours):
# that one request warns; every other request of the walk verifies against the test CA.
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
async def test_heroku3_over_https(running: Running, files: Files) -> None:
    heroku3 = pytest.importorskip("heroku3")
    requests = pytest.importorskip("requests")
    assert running.daemon.store is not None
    _, api_token = await running.daemon.store.create_account("tls@example.com")
    base = f"https://127.0.0.1:{running.ports.api}"
    heroku_url = "https://api.heroku.com"

    class ToLogplexd(requests.adapters.HTTPAdapter):  # type: ignore[misc,name-defined]
        def send(self, request: Any, **kwargs: Any) -> Any:
            request.url = base + request.url[len(heroku_url) :]
            return super().send(request, **kwargs)

    store = running.daemon.store

    def walk() -> dict[str, Any]:
        session = requests.Session()
        # heroku3 turns trust_env off (so REQUESTS_CA_BUNDLE is not read): the session is
        # told the test CA instead, and verifies the daemon's certificate against it.
        session.verify = str(files.ca)
        session.mount(heroku_url, ToLogplexd())
        heroku = heroku3.from_key(api_token, session=session)
        seen: dict[str, Any] = {"verified": heroku.is_authenticated}
        app = heroku.create_app(name="tls-walk")
        seen["apps"] = [a.name for a in heroku.apps()]
        drain = app.create_logdrain("syslog://127.0.0.1:9")
        seen["drains"] = [d.url for d in app.logdrains()]
        (token,) = [t.id for t in store.tokens_of("tls-walk") if t.name == "app"]
        posted = requests.post(
            f"https://localhost:{running.ports.logs}/logs",
            data=frame(token, "over https", ps="web.1"),
            auth=("token", token),
            headers={"Content-Type": "application/logplex-1"},
            timeout=5,
            verify=str(files.ca),
        )
        seen["posted"] = posted.status_code
        # heroku3 reads logplex_url itself (with certificate checks off), over https here.
        seen["logplex_url"] = app._logger(lines=10, tail=0).logplex_url
        seen["log"] = app.get_log(lines=10, timeout=10)
        app.remove_logdrain(drain.id)
        seen["deleted"] = app.delete()
        return seen

    with trio.fail_after(20):
        seen = await trio.to_thread.run_sync(walk, abandon_on_cancel=True)
    assert seen["verified"] is True
    assert seen["apps"] == ["tls-walk"]
    assert seen["drains"] == ["syslog://127.0.0.1:9"]
    assert seen["posted"] == 204
    assert seen["logplex_url"].startswith(f"{base}/sessions/")
    assert seen["log"] == "2012-12-10T03:00:48.123456Z app[web.1]: over https\n"
    assert seen["deleted"] is True


@pytest.mark.integration
async def test_sighup_reloads_the_certificates_of_a_running_daemon(
    tmp_path: Path, files: Files, ca: trustme.CA
) -> None:
    """The real signal, to a real daemon process started with ``logplexd serve``."""
    config = tmp_path / "logplexd.toml"
    config.write_text(
        "\n".join(
            [
                'api_addr = "127.0.0.1:0"',
                'logs_addr = "127.0.0.1:0"',
                'syslog_addr = "127.0.0.1:0"',
                f'data_dir = "{tmp_path / "data"}"',
                f'api_tls_cert = "{files.api_cert}"',
                f'api_tls_key = "{files.api_key}"',
                f'logs_tls_cert = "{files.logs_cert}"',
                f'logs_tls_key = "{files.logs_key}"',
                "",
            ]
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LOGPLEX", "LISTEN_"))},
        "LOGPLEX_AUTH_KEY": KEY,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "logplexd.cli", "serve", "--config", str(config)]
    process = await trio.lowlevel.open_process(command, env=env, stderr=-1)
    assert process.stderr is not None
    log = b""

    async def read_log_until(marker: bytes) -> None:
        nonlocal log
        assert process.stderr is not None
        with trio.fail_after(20):
            while marker not in log:
                chunk = await process.stderr.receive_some(65536)
                assert chunk, log.decode(errors="replace")
                log += chunk

    client = client_context(ca)

    async def handshake(port: int, name: str) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(stream, client, server_hostname=name)
        try:
            await tls.do_handshake()
        finally:
            await trio.aclose_forcefully(tls)

    try:
        await read_log_until(b"logplexd ready")
        line = log[log.index(b"logplexd ready") :].split(b"\n")[0].decode()
        found = re.search(
            r"api 127\.0\.0\.1:(\d+) \(https\), logs 127\.0\.0\.1:(\d+) \(https\)", line
        )
        assert found is not None, line
        api_port, logs_port = int(found.group(1)), int(found.group(2))
        for port in (api_port, logs_port):
            await handshake(port, "localhost")
        write_certificate(ca, files.api_cert, files.api_key, "renewed.example")
        write_certificate(ca, files.logs_cert, files.logs_key, "renewed.example")
        process.send_signal(signal.SIGHUP)
        await read_log_until(b"TLS certificate re-read")
        for port in (api_port, logs_port):
            await handshake(port, "renewed.example")
            with pytest.raises(trio.BrokenResourceError):
                await handshake(port, "localhost")
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
