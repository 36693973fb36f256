"""The real heroku CLI (npm package ``heroku``), installed once and pointed at a daemon.

Where it lives: ``$LOGPLEXD_TEST_HEROKU_CLI`` (.ci/run sets it and installs the CLI there
before the tests), else ``~/.cache/logplexd-tests/heroku-<version>`` (``$XDG_CACHE_HOME``
if set). A missing install is made on first use with ``npm install --prefix``, into a
temporary directory renamed into place, under a lock, so a half-made one is never used.

``cli_env`` is the whole environment of one run: nothing of the caller's (no proxy, no
HEROKU_* of the runner, no XDG dirs), a throwaway HOME, and every variable that keeps the
CLI away from Heroku's own servers, set before its first run.

Run as a script (``python3 tests/helpers/heroku_cli.py``, standard library only), it
installs the CLI and prints where: .ci/run does so before the tests.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

VERSION = "11.10.0"
DIR_ENV = "LOGPLEXD_TEST_HEROKU_CLI"
INSTALL_TIMEOUT = 300

NODE = shutil.which("node")
NPM = shutil.which("npm")
# Nothing here could install the CLI, and this is not CI (.ci/run installs node, npm and
# the CLI, so there it must run): the tests may skip (``may_skip(when=...)``).
NOTHING_CAN_INSTALL = (NODE is None or NPM is None) and not os.environ.get("CI")


def install_dir() -> Path:
    configured = os.environ.get(DIR_ENV)
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "logplexd-tests" / f"heroku-{VERSION}"


def _installed(directory: Path) -> Path | None:
    """The CLI's entry script in ``directory``, if the right version is there."""
    package = directory / "node_modules" / "heroku"
    try:
        version = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    script = package / "bin" / "run.js"
    return script if version == VERSION and script.is_file() else None


def install(directory: Path) -> Path:
    """The CLI's entry script, installing it into ``directory`` first if needed; raises
    RuntimeError (with npm's output) when it cannot."""
    found = _installed(directory)
    if found is not None:
        return found
    if NPM is None or NODE is None:
        raise RuntimeError("node and npm are needed to install the heroku CLI")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be installing it
        found = _installed(directory)
        if found is not None:
            return found
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
        try:
            # No install scripts: the CLI needs none of its dependencies' (native addons of
            # optional features), and npm 11 asks before running them anyway.
            done = subprocess.run(
                [NPM, "install", "--prefix", str(staging), "--no-audit", "--no-fund"]
                + ["--ignore-scripts", "--no-update-notifier", f"heroku@{VERSION}"],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
            if done.returncode != 0 or _installed(staging) is None:
                raise RuntimeError(f"npm install heroku@{VERSION} failed:\n{done.stderr[-2000:]}")
            shutil.rmtree(directory, ignore_errors=True)
            staging.rename(directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    found = _installed(directory)
    assert found is not None
    return found


def heroku_cli() -> Path:
    """The installed CLI's entry script; skips the test when it cannot be had."""
    import pytest  # not when run as a script

    try:
        return install(install_dir())
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"heroku CLI {VERSION} unavailable: {exc}")


@dataclass(frozen=True)
class HerokuCli:
    """``argv(*args)`` and ``env`` of a run of the CLI against one daemon."""

    script: Path
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        assert NODE is not None
        return [NODE, "--no-deprecation", str(self.script), *args]


def cli_env(api_url: str, api_key: str, home: Path) -> dict[str, str]:
    """The CLI's whole environment: ``api_url`` for the Platform API and particleboard,
    the account's ``api_key``, and ``home`` (created) for its config, cache and data."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "LANG": "C.UTF-8",
        "HEROKU_HOST": api_url,
        "HEROKU_PARTICLEBOARD_URL": api_url,
        "HEROKU_API_KEY": api_key,
        "DISABLE_TELEMETRY": "true",
        "HEROKU_SKIP_NEW_VERSION_CHECK": "true",
        "HEROKU_DISABLE_AUTOUPDATE": "true",
        "NO_COLOR": "1",
        "FORCE_COLOR": "0",
        "TERM": "dumb",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


if __name__ == "__main__":
    install(install_dir())
    print(install_dir())
