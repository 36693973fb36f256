"""systemd: the notify protocol against real datagram sockets, socket activation with real
inherited descriptors (a launcher that execs the daemon the way systemd does), SIGHUP reload
and SIGTERM, and ``systemd-analyze verify`` on the units."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import trio

from logplexd.daemon import Daemon, systemd
from logplexd.daemon.systemd import ActivationError, Notifier, assign_roles, watchdog_interval
from tests.helpers import ROOT
from tests.helpers.daemon import KEY, settings_for
from tests.helpers.http import request
from tests.helpers.peers import SYSTEMD_ANALYZE
from tests.helpers.syslog import frame


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, tmp_path: Path, *, abstract: bool = False) -> None:
        self.raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock = trio.socket.from_stdlib_socket(self.raw)
        if abstract:
            name = f"logplexd-test-{uuid.uuid4().hex}"
            self.address = "@" + name
            self.bind_to: str | bytes = b"\0" + name.encode()
        else:
            self.bind_to = self.address = str(tmp_path / "notify.sock")
        self.messages: list[dict[str, str]] = []

    async def bind(self) -> NotifyListener:
        self.raw.bind(self.bind_to)
        return self

    async def next(self, timeout: float = 10.0) -> dict[str, str]:
        with trio.fail_after(timeout):
            data = await self.sock.recv(4096)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append(fields)
        return fields

    async def wait_for(self, key: str, timeout: float = 20.0) -> dict[str, str]:
        with trio.fail_after(timeout):
            while True:
                fields = await self.next(timeout)
                if key in fields:
                    return fields

    def pending(self) -> int:
        count = 0
        while True:
            try:
                self.raw.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return count
            count += 1


# --- the notify protocol --------------------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True])
async def test_notifier_sends_datagrams(tmp_path: Path, abstract: bool) -> None:
    listener = await NotifyListener(tmp_path, abstract=abstract).bind()
    notifier = Notifier({"NOTIFY_SOCKET": listener.address})
    assert notifier.ready("channels=0")
    assert await listener.next() == {"READY": "1", "STATUS": "channels=0"}
    assert notifier.status("two\nlines")
    assert await listener.next() == {"STATUS": "two lines"}
    assert notifier.stopping()
    assert await listener.next() == {"STOPPING": "1"}
    notifier.close()


def test_notifier_without_systemd_is_a_no_op(tmp_path: Path) -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert not gone.watchdog()  # never raises


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None


async def test_daemon_ready_watchdog_stopping(tmp_path: Path) -> None:
    listener = await NotifyListener(tmp_path).bind()
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "100000"}
    daemon = Daemon(settings_for(tmp_path), environ=env)
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        ready = await listener.wait_for("READY")
        assert ready["STATUS"].startswith("channels=0 drains=0 tails=0")
        # READY is sent only once the listeners answer.
        status, _, _ = await request(ports.api, "GET", "/v3/healthcheck", auth=None)
        assert status == 200
        await listener.wait_for("WATCHDOG")
        await listener.wait_for("WATCHDOG")
        # A hung event loop stops pinging: block it (as a runaway sync call would).
        listener.pending()
        time.sleep(0.3)  # noqa: ASYNC251 - blocking the loop is the point
        assert listener.pending() <= 1  # at most the ping that was already due
        await listener.wait_for("WATCHDOG")  # and the pings resume with the loop
        await daemon.shutdown()
        assert (await listener.wait_for("STOPPING"))["STOPPING"] == "1"


# --- socket activation -------------------------------------------------------------------------


def test_assign_roles_by_name_then_by_order() -> None:
    socks = [socket.socket() for _ in range(4)]
    try:
        named = assign_roles([("syslog", socks[0]), ("x.socket", socks[1]), ("", socks[2])])
        assert named == {"syslog": [socks[0]], "api": [socks[1]], "logs": [socks[2]]}
        by_order = assign_roles([("logplexd.socket", s) for s in socks[:3]])
        assert by_order == {"api": [socks[0]], "logs": [socks[1]], "syslog": [socks[2]]}
        with pytest.raises(ActivationError):
            assign_roles([("", socket.socket()) for _ in range(5)])
    finally:
        for s in socks:
            s.close()


def test_listen_fds_ignores_another_process_and_unsets() -> None:
    env = {"LISTEN_FDS": "3", "LISTEN_PID": "1", "LISTEN_FDNAMES": "a:b:c"}
    assert systemd.listen_fds(env) == {}
    assert env == {}  # never passed on to children
    assert systemd.listen_fds({}) == {}


LAUNCHER = """
import os, sys
# What systemd does between fork and exec: the sockets become fds 3.., LISTEN_PID is the
# pid of the process that will run the daemon (exec keeps it).
fds = [int(x) for x in sys.argv[1].split(",")]
for i, fd in enumerate(fds):
    os.dup2(fd, 3 + i)
    os.set_inheritable(3 + i, True)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDNAMES"] = sys.argv[2]
os.execv(sys.executable, [sys.executable, "-c",
    "import sys; from logplexd.cli import main; sys.exit(main())", *sys.argv[3:]])
"""


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@pytest.mark.integration
async def test_socket_activation_reload_and_sigterm(tmp_path: Path) -> None:
    listener = await NotifyListener(tmp_path).bind()
    api, logs, syslog = (_listening_socket() for _ in range(3))
    api_port, syslog_port = api.getsockname()[1], syslog.getsockname()[1]
    config = tmp_path / "logplexd.toml"
    config.write_text('log_level = "info"\n')
    fds = [s.fileno() for s in (syslog, api, logs)]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LOGPLEX", "LISTEN_"))},
        "NOTIFY_SOCKET": listener.address,
        "LOGPLEX_AUTH_KEY": KEY,
        "PYTHONPATH": str(ROOT),
    }
    # Popen returns once the child runs; its pipes and exit are awaited through a thread.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [
            sys.executable,
            "-c",
            LAUNCHER,
            ",".join(map(str, fds)),
            # Named sockets, passed in another order than the roles: the names decide.
            "syslog:api:logs",
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "data"),
            # Deliberately unusable addresses: the inherited sockets are used instead.
            "--api-addr",
            "192.0.2.1:1",
        ],
        pass_fds=fds,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for s in (api, logs, syslog):
        s.close()  # the daemon holds the only copies now
    try:
        ready = await listener.wait_for("READY")
        assert "channels=0" in ready["STATUS"]
        status, _, body = await request(
            api_port, "PUT", "/v3/channels/app", body={"tokens": ["app"]}
        )
        assert status == 201, body
        token = json.loads(body)["tokens"]["app"]
        # A syslog connection open across the reload keeps working.
        stream = await trio.open_tcp_stream("127.0.0.1", syslog_port)
        await stream.send_all(frame(token, "before reload"))

        config.write_text('log_level = "debug"\napi_status = "read_only"\n')
        proc.send_signal(signal.SIGHUP)
        assert (await listener.wait_for("RELOADING"))["RELOADING"] == "1"
        ready = await listener.wait_for("READY")
        assert "rods=api_status" in ready["STATUS"]
        status, _, _ = await request(api_port, "PUT", "/v3/channels/other", body={})
        assert status == 503
        await stream.send_all(frame(token, "after reload"))
        await stream.aclose()
        status, _, body = await request(api_port, "GET", "/v3/channels/app/logs")
        with trio.fail_after(10):
            while body.count(b"reload") < 2:
                await trio.sleep(0.02)
                status, _, body = await request(api_port, "GET", "/v3/channels/app/logs")
        assert status == 200

        proc.send_signal(signal.SIGTERM)
        assert (await listener.wait_for("STOPPING"))["STOPPING"] == "1"
        with trio.fail_after(20):
            code = await trio.to_thread.run_sync(proc.wait)
        assert code == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert "socket activation: api listener on 127.0.0.1" in err
        assert "reload: applied api_status, log_level" in err
        assert "store: compacted" in err  # SIGTERM compacts the store
        assert KEY not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


async def test_reload_applies_live_settings_and_reports_the_rest(tmp_path: Path) -> None:
    from logplexd.config import Address

    settings = settings_for(tmp_path)
    new_settings = [settings]
    daemon = Daemon(settings, environ={}, reload_settings=lambda old: new_settings[0])
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        new_settings[0] = settings_for(
            tmp_path,
            auth_key="new-key",
            deny_logs_ingress=True,
            max_frame=512,
            syslog_addr=Address("127.0.0.1", 1),
        )
        assert daemon.reload() == ["max_frame", "syslog_addr"]
        assert daemon.settings.max_frame == settings.max_frame  # still in force
        assert daemon.settings.auth_key == "new-key"
        assert daemon.rods.state.deny_logs_ingress
        status, _, _ = await request(ports.api, "GET", "/v3/channels/x", auth=KEY)
        assert status == 401
        status, _, _ = await request(ports.api, "GET", "/v3/channels/x", auth="new-key")
        assert status == 404
        # A rod changed at run time survives a reload that does not touch it.
        daemon.rods.set({"deny_tail_sessions": True})
        daemon.reload()
        assert daemon.rods.state.deny_tail_sessions

        def broken(old: object) -> object:
            raise ValueError("bad file")

        daemon._reload_settings = broken  # type: ignore[assignment]
        assert daemon.reload() == []
        assert daemon.settings.auth_key == "new-key"
        nursery.cancel_scope.cancel()


async def test_reload_rereads_the_tls_certificate(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"

    def issue(name: str) -> None:
        leaf = ca.issue_cert(name)
        leaf.private_key_pem.write_to_path(str(key_file))
        leaf.cert_chain_pems[0].write_to_path(str(cert_file))

    issue("first.example")
    from logplexd.config import Address

    settings = settings_for(
        tmp_path, tls_cert=cert_file, tls_key=key_file, tls_syslog_addr=Address("127.0.0.1", 0)
    )
    daemon = Daemon(settings, environ={}, reload_settings=lambda old: old)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        client = ssl.create_default_context()
        ca.configure_trust(client)

        port = daemon.tls_port
        assert port is not None

        async def handshake(name: str) -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            tls = trio.SSLStream(stream, client, server_hostname=name)
            await tls.do_handshake()
            await tls.aclose()

        await handshake("first.example")
        issue("second.example")
        daemon.reload()
        await handshake("second.example")  # new connections get the new certificate
        # A broken new key is refused and the running certificate kept.
        key_file.write_text("not a key")
        assert daemon.reload() == []
        await handshake("second.example")
        nursery.cancel_scope.cancel()


# --- the unit files ----------------------------------------------------------------------------


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze missing")
@pytest.mark.may_skip(reason=".ci/run cannot install systemd in some containers")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    service = (ROOT / "systemd" / "logplexd.service").read_text()
    assert "Type=notify" in service and "WatchdogSec=" in service
    for directive in (
        "DynamicUser=yes",
        "StateDirectory=logplexd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
        "EnvironmentFile=",
        "ExecReload=",
    ):
        assert directive in service, directive
    # verify wants ExecStart= to exist; point it at a real executable.
    (tmp_path / "logplexd.service").write_text(
        service.replace("/usr/local/bin/logplexd", os.path.realpath(sys.executable))
    )
    shutil.copy(ROOT / "systemd" / "logplexd.socket", tmp_path / "logplexd.socket")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "logplexd.socket", "logplexd.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 even on unknown keys: any output at all is a finding.
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )
