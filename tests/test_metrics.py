"""``GET /metrics``: Prometheus text from the live counters of a real daemon."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import h11
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from logplexd.config import Address, Settings
from logplexd.daemon import BoundPorts, Daemon
from logplexd.daemon.metrics import LoopLag

KEY = "metrics-test-key"
LOOPBACK = Address("127.0.0.1", 0)


def settings_for(tmp_path: Path, **changes: object) -> Settings:
    base: dict[str, object] = {
        "api_addr": LOOPBACK,
        "logs_addr": LOOPBACK,
        "syslog_addr": LOOPBACK,
        "data_dir": tmp_path / "data",
        "auth_key": KEY,
    }
    return dataclasses.replace(Settings(), **{**base, **changes})  # type: ignore[arg-type]


class Exchange:
    """One HTTP/1.1 request on its own connection; the body can be read chunk by chunk."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False

    @classmethod
    async def open(
        cls,
        port: int,
        method: str,
        path: str,
        *,
        body: bytes | dict | None = None,
        headers: Iterable[tuple[str, str]] = (),
        auth: str | None = KEY,
    ) -> Exchange:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        self = cls(stream)
        head = [("Host", f"127.0.0.1:{port}"), ("Connection", "close"), *headers]
        if auth is not None:
            head.append(("Authorization", f"Basic {auth}"))
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            head.append(("Content-Type", "application/json"))
        body = body or b""
        head.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=path, headers=head))
        if body:
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        await stream.send_all(out)
        while True:
            event = await self._next()
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                return self

    async def _next(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            return event

    async def chunk(self) -> bytes | None:
        """The next piece of body, or None at its end."""
        while not self.ended:
            event = await self._next()
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.ended = True
        return None

    async def body(self) -> bytes:
        parts = []
        while (piece := await self.chunk()) is not None:
            parts.append(piece)
        await self.stream.aclose()
        return b"".join(parts)


async def request(
    port: int, method: str, path: str, **kwargs: object
) -> tuple[int, dict[str, str], bytes]:
    with trio.fail_after(10):
        exchange = await Exchange.open(port, method, path, **kwargs)  # type: ignore[arg-type]
        return exchange.status, exchange.headers, await exchange.body()


def frame(token: str, text: str) -> bytes:
    msg = f"<134>1 2012-12-10T03:00:48.123456Z host {token} web.1 - - {text}".encode()
    return b"%d %s" % (len(msg), msg)


async def create_channel(ports: BoundPorts, name: str = "app") -> str:
    status, _, body = await request(
        ports.api, "PUT", f"/v3/channels/{name}", body={"tokens": ["app"]}
    )
    assert status == 201, body
    return json.loads(body)["tokens"]["app"]


async def send_syslog(port: int, data: bytes) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    await stream.aclose()


async def wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value; also checks the text parses as Prometheus."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def scrape(port: int, auth: str | None = None) -> dict:
    status, headers, body = await request(port, "GET", "/metrics", auth=auth)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=")
    return samples(body.decode())


async def test_metrics_reads_live_counters(tmp_path: Path) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        token = await create_channel(ports)
        await request(
            ports.api, "POST", "/v3/channels/app/drains", body={"url": "syslog://127.0.0.1:1/"}
        )
        good = frame(token, "hello") + frame(token, "again")
        await send_syslog(ports.syslog, good + frame("t.unknown", "lost") + b"99999999 x")
        await wait_until(lambda: daemon.syslog.stats.frames >= 3 and daemon.syslog.stats.malformed)
        status, _, _ = await request(
            ports.logs,
            "POST",
            "/logs",
            body=frame(token, "via http"),
            headers=[("Content-Type", "application/logplex-1")],
            auth=base64.b64encode(f"token:{token}".encode()).decode(),
        )
        assert status == 204
        await request(ports.api, "GET", "/v3/channels/nope")

        found = await scrape(ports.api)  # loopback listener: no auth needed
        assert value(found, "logplexd_messages_received_total", input="syslog") == 3
        assert value(found, "logplexd_messages_routed_total", input="syslog") == 2
        assert value(found, "logplexd_messages_routed_total", input="logs") == 1
        assert (
            value(found, "logplexd_messages_dropped_total", input="syslog", reason="unknown_token")
            == 1
        )
        assert value(found, "logplexd_malformed_frames_total", input="syslog") == 1
        assert value(found, "logplexd_unknown_tokens_total", input="syslog") == 1
        assert value(found, "logplexd_received_bytes_total", input="syslog") > len(good)
        assert value(found, "logplexd_received_bytes_total", input="logs") > 0
        assert value(found, "logplexd_logs_requests_total", status="204") == 1
        assert value(found, "logplexd_channels") == 1
        assert value(found, "logplexd_store_journal_bytes") > 0
        assert value(found, "logplexd_tail_sessions") == 0
        assert value(found, "logplexd_connections_total", listener="api") >= 4
        assert value(found, "logplexd_connections_open", listener="api") == 1  # this scrape
        assert value(found, "logplexd_connections_total", listener="syslog") == 1
        assert value(found, "logplexd_connections_total", listener="logs") == 1
        drain = {"drain_id": "1", "channel": "app"}
        assert value(found, "logplexd_drain_delivered_total", **drain) == 0
        assert ("logplexd_drain_buffered", tuple(sorted(drain.items()))) in found
        states = [
            labels
            for (name, labels), v in found.items()
            if name == "logplexd_drain_state" and v == 1
        ]
        assert len(states) == 1
        put = {"route": "v3.channel.put", "method": "PUT", "status": "201"}
        assert value(found, "logplexd_api_requests_total", **put) == 1
        missing = {"route": "v3.channel.get", "method": "GET", "status": "404"}
        assert value(found, "logplexd_api_requests_total", **missing) == 1
        assert (
            value(found, "logplexd_api_request_duration_seconds_count", route="v3.channel.put") == 1
        )
        assert value(found, "logplexd_control_rod_active", rod="deny_logs_ingress") == 0
        assert value(found, "logplexd_api_status", logplexd_api_status="normal") == 1
        assert ("logplexd_event_loop_lag_seconds_count", ()) in found
        assert ("process_open_fds", ()) in found
        nursery.cancel_scope.cancel()


async def test_metrics_need_auth_on_a_non_loopback_listener(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, api_addr=Address("0.0.0.0", 0))
    daemon = Daemon(settings)
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        status, headers, _ = await request(ports.api, "GET", "/metrics", auth=None)
        assert status == 401
        assert headers["www-authenticate"] == "Basic realm=Logplex"
        found = await scrape(ports.api, auth=KEY)
        assert ("logplexd_channels", ()) in found
        nursery.cancel_scope.cancel()


async def test_loop_lag_measures_sleep_overshoot(autojump_clock: trio.abc.Clock) -> None:
    from prometheus_client import CollectorRegistry, Histogram

    lag = LoopLag(Histogram("lag", "lag", registry=CollectorRegistry()), interval=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        await trio.sleep(2.5)
        assert lag.last == pytest.approx(0.0, abs=1e-6)
        nursery.cancel_scope.cancel()
    lag.observe(0.25)
    assert (lag.last, lag.max) == (0.25, 0.25)
    lag.observe(-1)  # a clock that jumped back is no lag
    assert lag.last == 0.0
