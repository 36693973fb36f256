"""A real receiver: rsyslog's imtcp (plain and TLS) must parse every message a drain sends."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
import trio
import trustme

from logplexd.drains import DrainManager
from logplexd.router.registry import Registry
from tests.helpers.drains import TOKEN, append, message
from tests.helpers.net import accepting, free_port
from tests.helpers.peers import RSYSLOG_TLS, RSYSLOGD, needs_rsyslogd
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.integration, needs_rsyslogd]


def rsyslog_config(tmp: Path, port: int, tls: bool) -> Path:
    lines = [f'global(workDirectory="{tmp}"']
    if tls:
        lines[0] += (
            f' DefaultNetstreamDriverCAFile="{tmp}/ca.pem"'
            f' DefaultNetstreamDriverCertFile="{tmp}/cert.pem"'
            f' DefaultNetstreamDriverKeyFile="{tmp}/key.pem"'
        )
        lines.append(
            'module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1"'
            ' StreamDriver.AuthMode="anon")'
        )
    else:
        lines.append('module(load="imtcp")')
    lines[0] += ")"
    lines += [
        'template(name="fields" type="string"'
        ' string="%hostname%|%app-name%|%procid%|%syslogseverity%|%msg%\\n")',
        f'ruleset(name="drain") {{ action(type="omfile" file="{tmp}/out.log" template="fields") }}',
        f'input(type="imtcp" port="{port}" ruleset="drain")',
    ]
    conf = tmp / "rsyslog.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


async def run_rsyslog(tmp: Path, port: int, tls: bool, task_status=trio.TASK_STATUS_IGNORED):
    conf = rsyslog_config(tmp, port, tls)
    assert RSYSLOGD is not None
    # Popen returns once rsyslogd runs; readiness is awaited on its port, never on the process.
    process = subprocess.Popen(  # noqa: ASYNC220
        [RSYSLOGD, "-n", "-f", str(conf), "-i", str(tmp / "rsyslogd.pid")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(10):
            await accepting(port)
        task_status.started()
        await trio.sleep_forever()
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_rsyslog_receives_and_parses_every_message(nursery, tmp_path, tls):
    if tls and not RSYSLOG_TLS:
        pytest.skip("rsyslog's openssl driver (rsyslog-openssl) not installed")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    port = free_port()
    await nursery.start(run_rsyslog, tmp_path, port, tls)

    registry = Registry(history_messages=5000)
    channel = registry.ensure_channel("app")
    manager = DrainManager(registry, tls_ca_file=str(tmp_path / "ca.pem"), rng=random.Random(1))
    await nursery.start(manager.run)
    scheme = "syslog+tls" if tls else "syslog"
    manager.add_drain("app", 1, TOKEN, f"{scheme}://127.0.0.1:{port}")
    count = 2000
    append(channel, [message(i) for i in range(count)])
    out = tmp_path / "out.log"

    def lines() -> list[str]:
        return out.read_text().splitlines() if out.exists() else []

    await wait_until(lambda: len(lines()) >= count, timeout=20)
    assert lines() == [f"{TOKEN}|app|console.1|6|drain test message {i}" for i in range(count)]
