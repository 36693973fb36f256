"""The ``logplexd`` command: exit statuses, one-line errors, ``config check``, serve wiring.

The daemon and (mostly) the native module are replaced by fakes: these tests open no sockets.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

from logplexd import cli
from logplexd.cli import daemon as cli_daemon
from logplexd.config import Settings
from tests.helpers import ROOT

SECRET = "s3cr3t-Key-do-not-print"

pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


class FakeDaemon:
    def __init__(self, status: int = 0) -> None:
        self.status = status
        self.calls: list[Settings] = []

    def run(self, settings: Settings) -> int:
        self.calls.append(settings)
        return self.status


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    fake = FakeDaemon()
    module = types.ModuleType("logplexd.daemon")
    module.run = fake.run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "logplexd.daemon", module)
    monkeypatch.setattr(cli_daemon, "_import_native", lambda: None)
    return fake


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- configuration errors: status 2 and one line ---------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "toml", "expected"),
    [
        (
            [],
            {"LOGPLEXD_SYSLOG_ADDR": "nope"},
            None,
            "logplexd: invalid syslog_addr 'nope' (from LOGPLEXD_SYSLOG_ADDR): expected HOST:PORT",
        ),
        (
            ["serve", "--api-addr", "[::1]:99999"],
            {},
            None,
            "logplexd: invalid api_addr '[::1]:99999' (from --api-addr):"
            " the port must be a number from 0 to 65535",
        ),
        (
            ["--max-frame", "63"],
            {},
            None,
            "logplexd: invalid max_frame '63' (from --max-frame):"
            " expected an integer from 64 to 65000",
        ),
        (
            [],
            {"LOGPLEXD_HISTORY_MESSAGES": "0"},
            None,
            "logplexd: invalid history_messages '0' (from LOGPLEXD_HISTORY_MESSAGES):"
            " expected an integer from 1 to 100000",
        ),
        (
            ["--history-bytes", "2000"],
            {},
            None,
            "logplexd: invalid history_bytes 2000 (from --history-bytes): must be at least"
            " 2*max_frame+1024 = 21504 (max_frame 10240 from default)",
        ),
        (
            [],
            {"LOGPLEXD_SYSLOG_IDLE_TIMEOUT": "forever"},
            None,
            "logplexd: invalid syslog_idle_timeout 'forever' (from LOGPLEXD_SYSLOG_IDLE_TIMEOUT):"
            " expected a number of seconds from 0.01 to 86400",
        ),
        (
            ["--log-level", "loud"],
            {},
            None,
            "logplexd: invalid log_level 'loud' (from --log-level):"
            " expected one of debug, info, warning, error, critical",
        ),
        (
            ["--config", "CFG"],
            {},
            "max_drains_per_channel = 1001\n",
            "logplexd: invalid max_drains_per_channel 1001 (from CFG):"
            " expected an integer from 0 to 1000",
        ),
        (
            ["--config", "CFG"],
            {},
            'syslog_adr = "127.0.0.1:1"\n',
            "logplexd: unknown setting 'syslog_adr' (from CFG); did you mean 'syslog_addr'?",
        ),
        (
            [],
            {"LOGPLEXD_CONFIG": "CFG"},
            "[broken\n",
            "logplexd: invalid config file 'CFG' (from LOGPLEXD_CONFIG):"
            " Expected ']' at the end of a table declaration (at line 1, column 8)",
        ),
        (
            ["--config", "CFG.missing"],
            {},
            None,
            "logplexd: cannot read config file 'CFG.missing' (from --config):"
            " No such file or directory",
        ),
        (
            ["--tls-cert", "CFG"],
            {},
            "",
            "logplexd: tls_cert is set (from --tls-cert) but tls_key is not;"
            " set both to enable the TLS syslog listener, or neither",
        ),
        (
            [],
            {"LOGPLEX_AUTH_KEY": " \t "},
            None,
            "logplexd: invalid auth_key (from LOGPLEX_AUTH_KEY): must not be empty",
        ),
    ],
)
def test_configuration_errors(
    argv: list[str],
    env: dict[str, str],
    toml: str | None,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "logplexd.toml"
    if toml is not None:
        cfg.write_text(toml)

    def fill(text: str) -> str:
        return text.replace("CFG", str(cfg))

    for name, value in env.items():
        monkeypatch.setenv(name, fill(value))
    # Configuration is checked before anything else is loaded.
    monkeypatch.setitem(sys.modules, "logplexd.daemon", None)
    monkeypatch.setattr(cli_daemon, "_import_native", pytest.fail)

    assert cli.main([fill(a) for a in argv]) == 2
    assert one_error_line(capsys) == fill(expected)
    assert not (tmp_path / "logplexd-data").exists()


def test_auth_key_has_no_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--auth-key", SECRET]) == 2
    _, err = capsys.readouterr()
    assert "unrecognized arguments" in err


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_group_without_subcommand_shows_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config"]) == 2
    assert "check" in capsys.readouterr().err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "serve" in out and "config" in out
    assert cli.main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--syslog-addr" in out and "LOGPLEXD_SYSLOG_ADDR" in out and "--auth-key" not in out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("logplexd ")


# --- serve ------------------------------------------------------------------------------------


def test_bare_logplexd_serves_with_defaults(
    daemon: FakeDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([]) == 0
    (settings,) = daemon.calls
    assert settings.api_addr == ("127.0.0.1", 8001)
    # First start: a key is generated in ./logplexd-data and only its path is printed.
    key_file = tmp_path / "logplexd-data" / "auth_key"
    assert settings.auth_key == key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    out, err = capsys.readouterr()
    assert str(key_file) in err
    assert settings.auth_key not in out + err

    # Later starts reuse it, silently.
    assert cli.main(["serve"]) == 0
    assert daemon.calls[1].auth_key == settings.auth_key
    assert capsys.readouterr().err == ""


def test_serve_flags_env_and_file(
    daemon: FakeDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'api_addr = "127.0.0.1:1"\nlogs_addr = "127.0.0.1:2"\nauth_key = "{SECRET}"\n'
        'syslog_addr = "127.0.0.1:3"\n'
    )
    monkeypatch.setenv("LOGPLEXD_CONFIG", str(cfg))
    monkeypatch.setenv("LOGPLEXD_LOGS_ADDR", "[::1]:0")
    monkeypatch.setenv("LOGPLEXD_SYSLOG_ADDR", "127.0.0.1:4")
    argv = ["--syslog-addr", "[::1]:0", "--data-dir", str(tmp_path / "d"), "--max-frame", "128"]
    assert cli.main(argv) == 0
    (s,) = daemon.calls
    assert s.api_addr == ("127.0.0.1", 1)
    assert s.logs_addr == ("::1", 0)
    assert s.syslog_addr == ("::1", 0)
    assert s.max_frame == 128
    assert s.auth_key == SECRET
    assert s.data_dir == tmp_path / "d"
    assert not (tmp_path / "d").exists()  # a configured key needs no data dir yet


def test_serve_returns_daemon_status(daemon: FakeDaemon, tmp_path: Path) -> None:
    daemon.status = 1
    assert cli.main(["serve", "--data-dir", str(tmp_path)]) == 1


def test_native_unavailable_exits_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class NativeUnavailable(ImportError):
        pass

    def broken() -> None:
        raise NativeUnavailable("logplexd: the compiled module logplexd._native is missing")

    monkeypatch.setattr(cli_daemon, "_import_native", broken)
    monkeypatch.setitem(sys.modules, "logplexd.daemon", None)
    assert cli.main(["--data-dir", str(tmp_path / "d")]) == 1
    assert one_error_line(capsys) == "logplexd: the compiled module logplexd._native is missing"
    assert not (tmp_path / "d").exists()  # no key is generated for a daemon that cannot run


# --- config check -----------------------------------------------------------------------------


def test_config_check_prints_masked_effective_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'auth_key = "{SECRET}"\napi_addr = "[::1]:0"\nmax_frame = 2048\n')
    monkeypatch.setenv("LOGPLEXD_MAX_FRAME", "4096")
    assert cli.main(["config", "check", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert SECRET not in out
    assert 'auth_key = "****"' in out
    data = tomllib.loads(out)
    assert data["api_addr"] == "[::1]:0"
    assert data["max_frame"] == 4096  # merged with the environment, as serve would
    assert data["public_url"] == "http://[::1]:0"
    assert "max_frame = 4096  # from LOGPLEXD_MAX_FRAME" in out
    assert not (tmp_path / "logplexd-data").exists()  # checking never generates a key


def test_config_check_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('syslog_addr = "nope"\n')
    assert cli.main(["config", "check", str(cfg)]) == 2
    assert one_error_line(capsys) == (
        f"logplexd: invalid syslog_addr 'nope' (from {cfg}): expected HOST:PORT"
    )
    assert cli.main(["config", "check", str(tmp_path / "missing.toml")]) == 2
    assert one_error_line(capsys) == (
        f"logplexd: cannot read config file {str(tmp_path / 'missing.toml')!r}"
        " (from config check FILE): No such file or directory"
    )


def test_config_check_without_file_uses_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOGPLEX_AUTH_KEY", SECRET)
    assert cli.main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert 'auth_key = "****"  # from LOGPLEX_AUTH_KEY' in out


# --- the real console script ------------------------------------------------------------------


def _console_script() -> list[str]:
    # The installed entry point when this interpreter has one; otherwise exactly what the
    # generated wrapper does. PYTHONPATH below makes either import this checkout.
    script = shutil.which("logplexd", path=str(Path(sys.executable).parent))
    if script:
        return [script]
    return [sys.executable, "-c", "import sys; from logplexd.cli import main; sys.exit(main())"]


def _run_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LOGPLEXD_") and k != "LOGPLEX_AUTH_KEY"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(args: list[str], extra_env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_console_script(), *args],
        env={**_run_env(), **extra_env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_console_script_bad_address(tmp_path: Path) -> None:
    proc = _run([], {"LOGPLEXD_SYSLOG_ADDR": "bogus"}, tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "logplexd: invalid syslog_addr 'bogus' (from LOGPLEXD_SYSLOG_ADDR): expected HOST:PORT"
    ]
    assert not (tmp_path / "logplexd-data").exists()


def test_console_script_without_native_module(tmp_path: Path) -> None:
    # Hide the compiled extensions so the real logplexd.native raises NativeUnavailable.
    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('logplexd._native.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from logplexd.cli import main\n"
        "sys.exit(main())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--data-dir", str(tmp_path / "d")],
        env=_run_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("logplexd: the compiled module logplexd._native is missing")
    assert not (tmp_path / "d").exists()
