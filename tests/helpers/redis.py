"""Real Redis servers for the tests: one redis-server, or a three-master Redis Cluster.

Every process listens on loopback with its own directory under the test's tmp dir, and is
started and stopped by pid (SIGKILL: nothing survives that the test did not ask to keep).
Without the binaries (``apt-get install redis-server``, which ships redis-cli too) or the
``coredis`` package the fixtures (tests/conftest.py: ``redis_server``, ``redis_cluster``,
``redis_any``) skip, and fail under ``LOGPLEXD_TEST_STRICT=1`` (helpers/strict.py).

``RedisServer`` and ``RedisCluster`` share what the tests use: ``url``, ``start``, ``kill``,
``command`` (one command, raw RESP reply, sent to the node that owns its key) and ``keys``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from logplexd.native import NEED_DATA, RespReader
from logplexd.store import RedisStore

from .net import bindable, free_port
from .wait import wait_until

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
try:
    import coredis  # noqa: F401
except ImportError:  # pragma: no cover - coredis is a dependency
    HAVE_COREDIS = False
else:
    HAVE_COREDIS = True

SKIP_REASON = "needs redis-server and redis-cli (apt-get install redis-server) and coredis"
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_CLI is None or not HAVE_COREDIS, reason=SKIP_REASON
)

# Everything a test waits for is bounded; changes must reach other nodes within this.
PROPAGATION = 1.0
# A server (or a whole cluster) that is not serving within this fails the test.
START_TIMEOUT = 15.0
# A cluster's nodes agreeing on its state after they serve: gossip, slower while the suite
# keeps both cores busy and every node fsyncs its AOF (a CI run once saw 15 s pass).
CLUSTER_READY_TIMEOUT = 45.0


def cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too (both must be below 65536)."""
    for _ in range(1000):
        port = random.randrange(20000, 30000)
        if bindable(port) and bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _read_reply(reader: Any) -> bytes:
    """One whole RESP2 reply, raw: the first line, then the payload it announces."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise OSError("connection closed mid-reply")
    kind, size = line[:1], line[1:-2]
    if kind == b"$" and int(size) >= 0:
        return line + reader.read(int(size) + 2)
    if kind == b"*" and int(size) > 0:
        return line + b"".join(_read_reply(reader) for _ in range(int(size)))
    return line


def send(port: int | str, *args: str | bytes, timeout: float = 2.0) -> bytes:
    """One command as a RESP array (to ``port`` on loopback, or to the Unix socket at that
    path); the raw reply."""
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    if isinstance(port, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(port)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with sock:
        sock.sendall(request)
        with sock.makefile("rb") as reader:
            return _read_reply(reader)


def replicated(port: int, replicas: int = 1, timeout: float = 10.0) -> None:
    """Wait until ``replicas`` replicas of the master at ``port`` have acknowledged all it
    has written so far. ``WAIT`` cannot tell this from a new connection: it counts the
    acknowledgements of that connection's own writes, and a connection that wrote nothing
    is acknowledged at once."""
    deadline = time.monotonic() + timeout
    target: int | None = None
    while True:
        info = dict(
            line.split(":", 1)
            for line in send(port, "INFO", "replication").decode().splitlines()
            if ":" in line
        )
        if target is None:
            target = int(info["master_repl_offset"])
        acked = [
            int(value.split("offset=")[1].split(",")[0])
            for key, value in info.items()
            if key.startswith("slave") and key[5:].isdigit() and "offset=" in value
        ]
        if sum(1 for offset in acked if offset >= target) >= replicas:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"replicas of :{port} acknowledged {acked}, not {target}")
        time.sleep(0.01)


def command_calls(ports: Sequence[int | str]) -> dict[str, int]:
    """``INFO commandstats`` calls by command name, summed over the servers at ``ports``
    (loopback ports or Unix sockets' paths)."""
    calls: dict[str, int] = {}
    for port in ports:
        for line in send(port, "INFO", "commandstats").decode().splitlines():
            name, sep, stats = line.partition(":")
            if sep and name.startswith("cmdstat_"):
                count = int(stats.split("calls=")[1].split(",")[0])
                key = name.removeprefix("cmdstat_")
                calls[key] = calls.get(key, 0) + count
    return calls


def bulk_strings(reply: bytes) -> list[bytes]:
    """The bulk strings of a flat RESP array reply (KEYS, HKEYS)."""
    lines = reply.split(b"\r\n")
    return [
        lines[i + 1] for i, line in enumerate(lines) if line.startswith(b"$") and line != b"$-1"
    ]


def integer(reply: bytes) -> int:
    assert reply.startswith(b":"), reply
    return int(reply[1:].split(b"\r\n", 1)[0])


def counter(reply: bytes) -> int:
    """A GET reply of a key holding a number (a missing key: 0)."""
    if reply.startswith(b"$-1"):
        return 0
    assert reply.startswith(b"$"), reply
    return int(reply.split(b"\r\n")[1])


class RedisServer:
    """One redis-server process on loopback, started and stopped by pid. ``unix_only``: it
    listens on a Unix socket only (``--port 0``), which ``url`` and ``command`` then use."""

    def __init__(
        self,
        base: Path,
        *,
        persistent: bool = False,
        port: int | None = None,
        extra: tuple[str, ...] = (),
        unix_only: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.dir = base / f"redis-{self.port}"
        self.dir.mkdir(exist_ok=True)
        self.persistent = persistent
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        # A socket's path has at most 107 bytes: a test's tmp dir may be longer.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="redis-")) if unix_only else None
        self.socket_path = str(self._socket_dir / "redis.sock") if self._socket_dir else None

    @property
    def url(self) -> str:
        if self.socket_path is not None:
            return f"unix://{self.socket_path}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def _address(self) -> int | str:
        return self.socket_path if self.socket_path is not None else self.port

    def start(self) -> None:
        assert REDIS_SERVER is not None
        if self.socket_path is not None:
            args = [REDIS_SERVER, "--port", "0", "--unixsocket", self.socket_path]
            args += ["--unixsocketperm", "700"]
        else:
            args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.dir), "--save", "", "--daemonize", "no"]
        args += ["--logfile", str(self.dir / "redis.log")]
        if self.persistent:
            # Every acknowledged write is on disk before the reply: nothing is lost by kill -9.
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        args += list(self.extra)
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                # (A server with ``requirepass`` answers NOAUTH: it is serving too.)
                if send(self._address, "PING", timeout=0.5).startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                self.kill()
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.01)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def remove(self) -> None:
        """Kill it, and remove the Unix socket's directory (``kill`` alone keeps it, for a
        restart on the same path)."""
        self.kill()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def command(self, *args: str | bytes) -> bytes:
        """One command; the raw RESP reply."""
        return send(self._address, *args)

    def stored_keys(self) -> list[bytes]:
        return bulk_strings(self.command("KEYS", "*"))

    def command_calls(self) -> dict[str, int]:
        """Commands Redis ran so far, by name (``INFO commandstats``: a script's calls count
        one each)."""
        return command_calls([self._address])


class RedisCluster:
    """A Redis Cluster of ``masters`` redis-server processes (each with ``replicas``
    replicas, none by default) on loopback.

    Built the documented way (``redis-server --cluster-enabled yes`` per node, then
    ``redis-cli --cluster create``). ``kill`` and ``start`` again restart the same nodes:
    their nodes.conf (and with ``persistent`` their AOF) bring the cluster back as it was.
    """

    def __init__(
        self, base: Path, *, masters: int = 3, replicas: int = 0, persistent: bool = False
    ) -> None:
        self.masters = masters
        self.replicas = replicas
        self._base = base
        self._persistent = persistent
        self.servers: list[RedisServer] = self._new_servers()
        self.created = False
        # Clusters formed again from scratch because the first did not become ready.
        self.reformed = 0

    def _new_servers(self) -> list[RedisServer]:
        servers = []
        for _ in range(self.masters * (1 + self.replicas)):
            port = cluster_port()
            node_dir = self._base / f"redis-{port}"
            node_dir.mkdir(exist_ok=True)
            extra = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                # A node that stops answering counts as failed quickly (default 15 s).
                "--cluster-node-timeout", "1000",
            )  # fmt: skip
            servers.append(
                RedisServer(self._base, persistent=self._persistent, port=port, extra=extra)
            )
        return servers

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def url(self) -> str:
        # Two seeds out of three: coredis discovers the rest with CLUSTER SLOTS.
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def start(self) -> None:
        if self.created:
            self._start()
            return
        try:
            self._start()
        except (RuntimeError, subprocess.SubprocessError) as first:
            # A cluster being formed once did not become ready (a suite run saw "masters
            # 2/3", not seen since): form a new one, on new ports, once. A cluster that
            # existed before (a restart) is never formed again: its state is the test's.
            self.servers = self._new_servers()
            self.created = False
            self.reformed += 1
            try:
                self._start()
            except (RuntimeError, subprocess.SubprocessError) as second:
                raise second from first

    def _start(self) -> None:
        try:
            for server in self.servers:
                server.start()
            if not self.created:
                assert REDIS_CLI is not None
                nodes = [f"127.0.0.1:{p}" for p in self.ports]
                subprocess.run(
                    [REDIS_CLI, "--cluster", "create", *nodes]
                    + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
                    check=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    timeout=START_TIMEOUT,
                )
                self.created = True
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        """Until every running node says the cluster is ok and all agree on who owns every
        slot (a killed node is left out: the others may have failed over without it)."""
        deadline = time.monotonic() + CLUSTER_READY_TIMEOUT
        seen = "no node answered"
        while True:
            ports = [s.port for s in self.servers if s.proc is not None]
            try:
                states = {p: send(p, "CLUSTER", "INFO") for p in ports}
                seen = "not ok on " + ", ".join(
                    str(p) for p, info in states.items() if b"cluster_state:ok" not in info
                )
                if all(b"cluster_state:ok" in info for info in states.values()):
                    owners = [self._slot_owners(p) for p in ports]
                    replicas_up = all(
                        b"role:master" in info or b"master_link_status:up" in info
                        for info in (send(p, "INFO", "replication") for p in ports)
                    )
                    seen = (
                        f"slot owners agree: {all(o == owners[0] for o in owners)}, "
                        f"masters {len(set(owners[0]))}/{self.masters}, replicas up: {replicas_up}"
                        f"; CLUSTER NODES of {ports[0]}:\n"
                        + send(ports[0], "CLUSTER", "NODES").decode(errors="replace")
                    )
                    if (
                        all(o == owners[0] for o in owners)
                        and len(set(owners[0])) == self.masters
                        and replicas_up
                    ):
                        self._owners = owners[0]
                        return
            except OSError as exc:
                seen = f"a node did not answer: {exc!r}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not become ready ({seen})")
            time.sleep(0.02)

    @staticmethod
    def _slot_owners(port: int) -> list[int]:
        """Owner port of each slot, from CLUSTER SHARDS-free parsing of CLUSTER NODES."""
        text = send(port, "CLUSTER", "NODES").decode(errors="replace")
        owners = [0] * 16384
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 9 or "master" not in fields[2]:
                continue
            owner = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for spec in fields[8:]:
                if spec.startswith("["):
                    continue  # a slot being migrated
                first, _, last = spec.partition("-")
                for slot in range(int(first), int(last or first) + 1):
                    owners[slot] = owner
        return owners

    def kill(self) -> None:
        for server in self.servers:
            server.kill()

    def wait_ready(self) -> None:
        """Wait for the cluster to serve every slot again (after a failover, a reshard)."""
        self._wait_ready()

    def keyslot(self, key: str | bytes) -> int:
        port = next(s.port for s in self.servers if s.proc is not None)
        return integer(send(port, "CLUSTER", "KEYSLOT", key))

    def owner_of(self, key: str | bytes) -> int:
        """The port of the master that holds ``key``."""
        return self._owners[self.keyslot(key)]

    def server_of(self, key: str | bytes) -> RedisServer:
        """The master process that holds ``key``."""
        port = self.owner_of(key)
        return next(s for s in self.servers if s.port == port)

    def command(self, *args: str | bytes) -> bytes:
        """One command sent to the master owning its first key (args[1])."""
        port = self.owner_of(args[1]) if len(args) > 1 else self.ports[0]
        return send(port, *args)

    def stored_keys(self) -> list[bytes]:
        """Every key, read from the masters."""
        return [k for p in set(self._owners) for k in bulk_strings(send(p, "KEYS", "*"))]

    def command_calls(self) -> dict[str, int]:
        """``RedisServer.command_calls`` summed over the servers."""
        return command_calls([s.port for s in self.servers if s.proc is not None])


def require_redis() -> None:
    """Skip (fail, when strict) the test without the binaries or coredis."""
    if REDIS_SERVER is None or REDIS_CLI is None or not HAVE_COREDIS:
        pytest.skip(SKIP_REASON)


def module_cluster(tmp_path_factory: Any) -> Iterator[RedisCluster]:
    """The body of a module-scoped fixture: one Redis Cluster (about 2 s to form) for a
    module's tests, each keeping to its own key prefix; killed after the last."""
    require_redis()
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.kill()


@contextlib.asynccontextmanager
async def running(url: str, **options: Any) -> AsyncIterator[RedisStore]:
    """A RedisStore with its background task, as the daemon runs it."""
    store = RedisStore(url, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.maintain)
        try:
            yield store
        finally:
            nursery.cancel_scope.cancel()
            store.close()


async def eventually(check: Callable[[], object], timeout: float = PROPAGATION) -> None:
    """Poll ``check`` until true, failing after ``timeout`` seconds (``PROPAGATION``)."""
    await wait_until(check, timeout)


class ReplyLosingProxy:
    """TCP proxy to Redis that, once ``lose_next`` was called, forwards the next request
    holding ``marker`` (``EXEC``), waits until Redis has answered it, and then closes the
    client's connection without forwarding the answer: a transaction that ran and whose
    reply never came back (a connection cut at the worst moment). ``lose_next(after=k)``
    forwards the first ``k`` transactions' answers of that request (byte for byte up to the
    end of the k-th EXEC's) and loses the next one's. After ``slow_replies``,
    every answer on a connection that has sent one of its markers reaches the client that
    much later (the writer's, not the follower's XREADs: each has its own connection).
    ``read_replies`` holds what Redis answered on connections that sent an ``XREAD`` (the
    first ``READ_REPLIES_KEPT`` bytes), ``read_requests`` each piece received on them that
    holds an ``XREAD`` (the first ``READ_REQUESTS_KEPT``; a read of a few streams arrives
    whole)."""

    READ_REPLIES_KEPT = 4 << 20
    READ_REQUESTS_KEPT = 4096

    def __init__(self, target: int, marker: bytes = b"EXEC\r\n") -> None:
        self.target = target
        self.marker = marker
        self.armed = False
        self.after = 0
        self.lost = 0
        self.slow_markers: tuple[bytes, ...] = ()
        self.slow_seconds = 0.0
        self.slowed = 0
        self.read_replies = bytearray()
        self.read_requests: list[bytes] = []

    def lose_next(self, after: int = 0) -> None:
        self.armed = True
        self.after = after

    def slow_replies(self, markers: tuple[bytes, ...], seconds: float) -> None:
        self.slow_markers = markers
        self.slow_seconds = seconds

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
        except OSError:
            await client.aclose()
            return
        cut = trio.Event()
        slow = trio.Event()
        reader_connection = trio.Event()
        async with client, upstream, trio.open_nursery() as nursery:

            async def requests() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while data := await client.receive_some(65536):
                        if self.armed and self.marker in data:
                            self.armed = False
                            cut.set()
                        if any(marker in data for marker in self.slow_markers):
                            slow.set()
                        if b"XREAD" in data:
                            reader_connection.set()
                            if len(self.read_requests) < self.READ_REQUESTS_KEPT:
                                self.read_requests.append(data)
                        await upstream.send_all(data)
                nursery.cancel_scope.cancel()

            async def replies() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while data := await upstream.receive_some(65536):
                        if cut.is_set():
                            # The first ``after`` EXECs' answers are forwarded, byte for
                            # byte; whatever Redis answers after them goes nowhere, up to
                            # the next EXEC's reply (the one array: the transaction ran),
                            # then the cut.
                            reader = RespReader()
                            passed = 0
                            while data:
                                forward = 0
                                for i in range(len(data)):
                                    reader.feed(data[i : i + 1])
                                    while (reply := reader.next_reply()) is not NEED_DATA:
                                        if not isinstance(reply, list):
                                            continue
                                        if passed < self.after:
                                            passed += 1
                                            forward = i + 1
                                            continue
                                        await client.send_all(data[:forward])
                                        self.lost += 1
                                        nursery.cancel_scope.cancel()
                                        return
                                if passed < self.after:
                                    forward = len(data)
                                await client.send_all(data[:forward])
                                data = await upstream.receive_some(65536)
                            break
                        if slow.is_set():
                            self.slowed += 1
                            await trio.sleep(self.slow_seconds)
                        if reader_connection.is_set():
                            room = self.READ_REPLIES_KEPT - len(self.read_replies)
                            self.read_replies += data[: max(0, room)]
                        await client.send_all(data)
                nursery.cancel_scope.cancel()

            nursery.start_soon(requests)
            nursery.start_soon(replies)
