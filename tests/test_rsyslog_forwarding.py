"""A real rsyslogd forwarding with omfwd (TCP, octet-counted, RFC 5424) into our syslog port."""

import signal
from pathlib import Path

import pytest
import trio

from logplexd.ingest.syslog import SyslogInput
from logplexd.router.registry import Registry
from tests.helpers.net import accepting, free_port
from tests.helpers.peers import RSYSLOGD, logger_command, needs_rsyslogd

TOKEN = "t.5b432a82-2c03-4ecd-a8d4-a75d627b29ab"

pytestmark = [pytest.mark.integration, needs_rsyslogd]


CONFIG = """
global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" port="{inport}" address="127.0.0.1")
action(type="omfwd" target="127.0.0.1" port="{outport}" protocol="tcp"
       tcp_framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
"""


async def test_rsyslog_omfwd_octet_counted_reaches_the_channel(tmp_path: Path):
    registry = Registry()
    registry.add_token("app-9", TOKEN, "web")
    syslog = SyslogInput(registry)
    inport = free_port()
    async with trio.open_nursery() as nursery:
        outport = await nursery.start(syslog.serve, "127.0.0.1", 0)
        conf = tmp_path / "rsyslog.conf"
        conf.write_text(CONFIG.format(work=tmp_path, inport=inport, outport=outport))
        pidfile = tmp_path / "rsyslogd.pid"
        proc = await trio.lowlevel.open_process(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(pidfile)],
            stdout=None,
            stderr=None,
        )
        try:
            with trio.fail_after(20):
                await accepting(inport)  # rsyslogd is ready when its input port accepts
                for i in range(3):
                    await trio.run_process(
                        logger_command(inport, TOKEN, f"via rsyslog {i}", "-p", "local0.notice")
                    )
                channel = registry.channel("app-9")
                while len(channel.ring) < 3:
                    await channel.wait_appended()
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
        batch = channel.ring.last(10)
        msgs = [batch.fields(i)["msg"].rstrip(b"\n") for i in range(len(batch))]
        assert msgs == [b"via rsyslog 0", b"via rsyslog 1", b"via rsyslog 2"]
        assert {batch.fields(i)["app"] for i in range(3)} == {b"web"}
        assert {batch.fields(i)["pri"] for i in range(3)} == {16 * 8 + 5}
        assert syslog.stats.malformed == 0
        nursery.cancel_scope.cancel()
