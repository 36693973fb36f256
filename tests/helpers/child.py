"""A daemon in a child process (``python -m logplexd``-style, through the CLI), for tests
that kill it: its ports come from the "ready" line it logs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from logplexd.daemon import BoundPorts

from .daemon import KEY

_READY = re.compile(r"api [^ ]+:(\d+)[^,]*, logs [^ ]+:(\d+)[^,]*, syslog [^ ]+:(\d+)")


@dataclass
class DaemonProcess:
    data_dir: Path
    args: tuple[str, ...] = ()
    lines: list[str] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    _reader: threading.Thread | None = None
    _found: list[BoundPorts] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> BoundPorts:
        """Start the daemon; returns its ports once it logged that it is ready (blocking)."""
        ready = self._spawn()
        if not ready.wait(timeout) or not self._found:
            self.kill(signal.SIGKILL)
            raise AssertionError("the daemon did not start:\n" + "".join(self.lines))
        return self._found[0]

    def run(self, timeout: float = 30.0) -> int:
        """Start the daemon and wait for it to end by itself (one that is refused at start);
        returns its exit status (blocking)."""
        self._spawn()
        assert self.process is not None
        status = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return status

    def _spawn(self) -> threading.Event:
        """Start the process and a thread reading its log; the event is set once it logged
        that it is ready, or its log ended."""
        env = {
            **os.environ,
            "LOGPLEX_AUTH_KEY": KEY,
            "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        process = self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from logplexd.cli import main; sys.exit(main())",
                "--api-addr",
                "127.0.0.1:0",
                "--logs-addr",
                "127.0.0.1:0",
                "--syslog-addr",
                "127.0.0.1:0",
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        ready = threading.Event()
        found: list[BoundPorts] = []
        self._found = found

        def read() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                self.lines.append(line)
                match = _READY.search(line)
                if match and not found:
                    found.append(BoundPorts(*(int(g) for g in match.groups())))
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        return ready

    def kill(self, signum: int = signal.SIGKILL, timeout: float = 30.0) -> int:
        """Send ``signum`` and wait for the process to end; returns its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        status = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)  # every line it logged is in ``lines``
        return status

    @property
    def log(self) -> str:
        return "".join(self.lines)
