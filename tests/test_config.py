"""Configuration loading: precedence, validation, the auth key. No sockets, no native module."""

from __future__ import annotations

import dataclasses
import json
import stat
import tomllib
from pathlib import Path

import pytest

from logplexd.config import (
    SETTING_NAMES,
    Address,
    ConfigError,
    Settings,
    ensure_auth_key,
    env_var,
    flag_name,
    load_settings,
    parse_address,
    render_effective,
)
from tests.helpers import ROOT
from tests.helpers.privileges import searchable_dir, unprivileged

SECRET = "s3cr3t-Key-do-not-print"

# load_settings(env=...) is used below, but nothing may leak in from the runner either.
pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


def write_toml(tmp_path: Path, text: str, name: str = "logplexd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("logplexd: ")
    return message


# --- defaults and precedence -----------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings(env={})
    assert s == Settings()
    assert s.api_addr == ("127.0.0.1", 8001)
    assert s.logs_addr == Address("127.0.0.1", 8601)
    assert s.syslog_addr == Address("127.0.0.1", 6001)
    assert s.tls_syslog_addr == Address("127.0.0.1", 6514)
    assert s.data_dir == Path("logplexd-data")
    assert s.resolved_public_url() == "http://127.0.0.1:8001"
    assert (s.max_frame, s.history_messages, s.history_bytes) == (10240, 1500, 4 * 1024 * 1024)
    assert (s.max_syslog_connections, s.syslog_idle_timeout) == (1024, 300.0)
    assert (s.max_drains_per_channel, s.api_max_body, s.api_max_connections) == (6, 1 << 20, 1024)
    assert (s.shutdown_timeout, s.log_level, s.auth_key) == (5.0, "info", None)
    assert not s.tls_enabled
    assert set(s.sources.values()) == {"default"}


def test_precedence_flags_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'api_addr = "127.0.0.1:1111"\nlogs_addr = "127.0.0.1:2222"\n')
    env = {"LOGPLEXD_API_ADDR": "127.0.0.1:3333", "LOGPLEXD_CONFIG": str(path)}

    s = load_settings({"api_addr": "127.0.0.1:4444"}, env=env)
    assert s.api_addr == ("127.0.0.1", 4444)
    assert s.sources["api_addr"] == "--api-addr"
    assert s.logs_addr == ("127.0.0.1", 2222)
    assert s.sources["logs_addr"] == str(path)
    assert s.syslog_addr == ("127.0.0.1", 6001)
    assert s.sources["syslog_addr"] == "default"
    assert s.config_file == path

    s = load_settings({}, env=env)
    assert (s.api_addr, s.sources["api_addr"]) == (("127.0.0.1", 3333), "LOGPLEXD_API_ADDR")

    s = load_settings({}, env={"LOGPLEXD_CONFIG": str(path)})
    assert (s.api_addr, s.sources["api_addr"]) == (("127.0.0.1", 1111), str(path))


def test_config_file_argument_overrides_config_env(tmp_path: Path) -> None:
    a = write_toml(tmp_path, "max_frame = 100\n", "a.toml")
    b = write_toml(tmp_path, "max_frame = 200\n", "b.toml")
    s = load_settings(env={"LOGPLEXD_CONFIG": str(a)}, config_file=b)
    assert s.max_frame == 200


def test_every_setting_from_each_layer(tmp_path: Path) -> None:
    values: dict[str, object] = {
        "api_addr": "127.0.0.1:9001",
        "logs_addr": "127.0.0.1:9601",
        "syslog_addr": "127.0.0.1:7001",
        "tls_syslog_addr": "127.0.0.1:7514",
        "data_dir": str(tmp_path / "state"),
        "public_url": "https://logs.example.com/",
        "max_frame": 2048,
        "history_messages": 10,
        "history_bytes": 65536,
        "max_syslog_connections": 7,
        "syslog_idle_timeout": 0.5,
        "max_drains_per_channel": 0,
        "api_max_body": 4096,
        "api_max_connections": 3,
        "shutdown_timeout": 0,
        "log_level": "DEBUG",
    }
    expected = {
        "api_addr": Address("127.0.0.1", 9001),
        "logs_addr": Address("127.0.0.1", 9601),
        "syslog_addr": Address("127.0.0.1", 7001),
        "tls_syslog_addr": Address("127.0.0.1", 7514),
        "data_dir": tmp_path / "state",
        "public_url": "https://logs.example.com",
        "max_frame": 2048,
        "history_messages": 10,
        "history_bytes": 65536,
        "max_syslog_connections": 7,
        "syslog_idle_timeout": 0.5,
        "max_drains_per_channel": 0,
        "api_max_body": 4096,
        "api_max_connections": 3,
        "shutdown_timeout": 0.0,
        "log_level": "debug",
    }
    toml = "".join(
        f"{k} = {v!r}\n".replace("'", '"') if isinstance(v, str) else f"{k} = {v}\n"
        for k, v in values.items()
    )
    from_file = load_settings(config_file=write_toml(tmp_path, toml), env={})
    from_env = load_settings(env={env_var(k): str(v) for k, v in values.items()})
    from_flags = load_settings({k: str(v) for k, v in values.items()}, env={})
    for s in (from_file, from_env, from_flags):
        assert {k: getattr(s, k) for k in expected} == expected


def test_bad_file_value_is_reported_even_when_overridden(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'syslog_addr = "nope"\n')
    message = error_of(config_file=path, env={"LOGPLEXD_SYSLOG_ADDR": "127.0.0.1:1"})
    assert message == f"logplexd: invalid syslog_addr 'nope' (from {path}): expected HOST:PORT"


def test_empty_environment_variable_counts_as_unset() -> None:
    s = load_settings(env={"LOGPLEXD_SYSLOG_ADDR": "", "LOGPLEXD_CONFIG": ""})
    assert s.syslog_addr == ("127.0.0.1", 6001)
    assert s.config_file is None


def test_unrelated_logplexd_environment_is_ignored() -> None:
    # LOGPLEXD_NATIVE_CFLAGS belongs to the build, not to the daemon.
    assert load_settings(env={"LOGPLEXD_NATIVE_CFLAGS": "-O0"}) == Settings()


def test_settings_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().max_frame = 1  # type: ignore[misc]


# --- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:8001", "127.0.0.1", 8001, "127.0.0.1:8001"),
        ("0.0.0.0:0", "0.0.0.0", 0, "0.0.0.0:0"),
        ("localhost:0", "localhost", 0, "localhost:0"),
        ("logs.example.com:65535", "logs.example.com", 65535, "logs.example.com:65535"),
        ("[::1]:8001", "::1", 8001, "[::1]:8001"),
        ("[::]:0", "::", 0, "[::]:0"),
        ("[2001:db8::5]:6514", "2001:db8::5", 6514, "[2001:db8::5]:6514"),
    ],
)
def test_parse_address(text: str, host: str, port: int, shown: str) -> None:
    addr = parse_address(text)
    assert addr == (host, port)
    assert (addr.host, addr.port) == (host, port)
    assert str(addr) == shown


def test_ipv6_and_port_zero_settings() -> None:
    s = load_settings({"api_addr": "[::1]:0"}, env={"LOGPLEXD_SYSLOG_ADDR": "[::1]:0"})
    assert s.api_addr == ("::1", 0)
    assert s.syslog_addr == ("::1", 0)
    # Port 0 listeners never clash with each other.
    s = load_settings({"api_addr": "127.0.0.1:0", "logs_addr": "127.0.0.1:0"}, env={})
    assert s.api_addr.port == s.logs_addr.port == 0


def test_public_url_defaults_to_bound_api_address() -> None:
    s = load_settings({"api_addr": "[::1]:0"}, env={})
    assert s.public_url is None
    assert s.resolved_public_url() == "http://[::1]:0"
    assert s.resolved_public_url(("::1", 43210)) == "http://[::1]:43210"
    explicit = load_settings({"public_url": "https://x.example"}, env={})
    assert explicit.resolved_public_url(("::1", 43210)) == "https://x.example"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nope", "expected HOST:PORT"),
        (":8001", "expected HOST:PORT"),
        ("::1:8001", "expected HOST:PORT (write IPv6 addresses as [ADDR]:PORT)"),
        ("[::1]8001", "expected [IPV6]:PORT"),
        ("[::1:8001", "expected [IPV6]:PORT"),
        ("[nope]:1", "'nope' is not an IPv6 address"),
        ("300.0.0.1:1", "'300.0.0.1' is not an IPv4 address"),
        ("bad host:1", "'bad host' is not a valid host name"),
        ("127.0.0.1:", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:65536", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:-1", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:http", "the port must be a number from 0 to 65535"),
    ],
)
def test_bad_address(text: str, reason: str) -> None:
    message = error_of(env={"LOGPLEXD_SYSLOG_ADDR": text})
    assert message == (
        f"logplexd: invalid syslog_addr {text!r} (from LOGPLEXD_SYSLOG_ADDR): {reason}"
    )


def test_address_must_be_a_string_in_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "api_addr = 8001\n")
    assert error_of(config_file=path, env={}) == (
        f"logplexd: invalid api_addr 8001 (from {path}): expected a string HOST:PORT"
    )


def test_listeners_on_the_same_port_are_rejected() -> None:
    message = error_of(env={"LOGPLEXD_LOGS_ADDR": "0.0.0.0:8001"})
    assert message == (
        "logplexd: invalid logs_addr '0.0.0.0:8001' (from LOGPLEXD_LOGS_ADDR):"
        " same port as api_addr (from default)"
    )
    # Different hosts, neither a wildcard: allowed.
    load_settings({"logs_addr": "127.0.0.2:8001"}, env={})


# --- numbers and other values ----------------------------------------------------------------

RANGES = {
    "max_frame": (64, 65000),
    "history_messages": (1, 100_000),
    "max_syslog_connections": (1, 1_000_000),
    "max_drains_per_channel": (0, 1000),
    "api_max_body": (1024, 256 * 1024 * 1024),
    "api_max_connections": (1, 1_000_000),
}


@pytest.mark.parametrize("name", sorted(RANGES))
def test_integer_limits(name: str) -> None:
    lo, hi = RANGES[name]
    expected = f"expected an integer from {lo} to {hi}"
    assert getattr(load_settings({name: str(lo)}, env={}), name) == lo
    assert getattr(load_settings({name: str(hi)}, env={}), name) == hi
    for bad in (str(lo - 1), str(hi + 1), "12.5", "ten", ""):
        message = error_of(flags={name: bad}, env={})
        assert message == f"logplexd: invalid {name} {bad!r} (from {flag_name(name)}): {expected}"


def test_integer_from_toml_must_be_an_integer(tmp_path: Path) -> None:
    # A quoted number is accepted, as from the environment.
    assert load_settings(config_file=write_toml(tmp_path, 'max_frame = "128"\n'), env={})
    for text, shown in (("true", "True"), ("10240.0", "10240.0"), ("[1]", "[1]")):
        path = write_toml(tmp_path, f"max_frame = {text}\n")
        assert error_of(config_file=path, env={}) == (
            f"logplexd: invalid max_frame {shown} (from {path}):"
            " expected an integer from 64 to 65000"
        )


def test_history_bytes_must_hold_two_frames() -> None:
    assert load_settings({"max_frame": "1000", "history_bytes": "3024"}, env={}).history_bytes
    message = error_of(flags={"max_frame": "1000", "history_bytes": "3023"}, env={})
    assert message == (
        "logplexd: invalid history_bytes 3023 (from --history-bytes): must be at least"
        " 2*max_frame+1024 = 3024 (max_frame 1000 from --max-frame)"
    )
    assert "expected an integer from 1152 to 1073741824" in error_of(
        env={"LOGPLEXD_HISTORY_BYTES": str(2**30 + 1)}
    )


@pytest.mark.parametrize(
    ("name", "good", "bad", "reason"),
    [
        ("syslog_idle_timeout", "0.25", "0", "expected a number of seconds from 0.01 to 86400"),
        (
            "syslog_idle_timeout",
            "86400",
            "86401",
            "expected a number of seconds from 0.01 to 86400",
        ),
        ("syslog_idle_timeout", "1", "nan", "expected a number of seconds from 0.01 to 86400"),
        ("shutdown_timeout", "0", "-1", "expected a number of seconds from 0 to 3600"),
        ("shutdown_timeout", "3600", "inf", "expected a number of seconds from 0 to 3600"),
        ("session_url_ttl", "1", "0.5", "expected a number of seconds from 1 to 86400"),
        ("session_url_ttl", "86400", "86401", "expected a number of seconds from 1 to 86400"),
        ("session_url_ttl", "300", "five", "expected a number of seconds from 1 to 86400"),
        ("tail_max_duration", "1", "0", "expected a number of seconds from 1 to 604800"),
        ("tail_max_duration", "604800", "604801", "expected a number of seconds from 1 to 604800"),
        ("tail_max_duration", "3600", "nan", "expected a number of seconds from 1 to 604800"),
        (
            "log_level",
            "WARNING",
            "verbose",
            "expected one of debug, info, warning, error, critical",
        ),
        ("public_url", "http://[::1]:8001", "ftp://x", "expected an http:// or https:// URL"),
        (
            "public_url",
            "https://a.example/base",
            "example.com",
            "expected an http:// or https:// URL",
        ),
        ("public_url", "http://a", "http://a/?q=1", "the URL must not have a query or fragment"),
    ],
)
def test_value_validation(name: str, good: str, bad: str, reason: str) -> None:
    load_settings(env={env_var(name): good})
    message = error_of(env={env_var(name): bad})
    assert message == f"logplexd: invalid {name} {bad!r} (from {env_var(name)}): {reason}"


def test_long_values_are_shortened_in_errors() -> None:
    message = error_of(env={"LOGPLEXD_API_ADDR": "x" * 500})
    assert len(message) < 300


def test_control_characters_stay_on_one_line() -> None:
    message = error_of(env={"LOGPLEXD_API_ADDR": "a\nb:1"})
    assert "\\n" in message


# --- TLS -------------------------------------------------------------------------------------


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    s = load_settings({"tls_cert": str(cert), "tls_key": str(key)}, env={})
    assert s.tls_enabled and (s.tls_cert, s.tls_key) == (cert, key)
    assert error_of(flags={"tls_cert": str(cert)}, env={}) == (
        "logplexd: tls_cert is set (from --tls-cert) but tls_key is not;"
        " set both to enable the TLS syslog listener, or neither"
    )
    assert error_of(env={"LOGPLEXD_TLS_KEY": str(key)}) == (
        "logplexd: tls_key is set (from LOGPLEXD_TLS_KEY) but tls_cert is not;"
        " set both to enable the TLS syslog listener, or neither"
    )
    missing = tmp_path / "missing.pem"
    assert error_of(flags={"tls_cert": str(cert), "tls_key": str(missing)}, env={}) == (
        f"logplexd: invalid tls_key {str(missing)!r} (from --tls-key): not a readable file"
    )


def test_tls_listener_port_only_checked_when_enabled(tmp_path: Path) -> None:
    s = load_settings({"tls_syslog_addr": "127.0.0.1:6001"}, env={})
    assert not s.tls_enabled
    (tmp_path / "c").write_text("x")
    message = error_of(
        flags={"tls_syslog_addr": "127.0.0.1:6001", "tls_cert": "c", "tls_key": "c"}, env={}
    )
    assert "same port as syslog_addr" in message


# --- the config file -------------------------------------------------------------------------


def test_unknown_toml_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'api_adr = "127.0.0.1:1"\n')
    assert error_of(config_file=path, env={}) == (
        f"logplexd: unknown setting 'api_adr' (from {path}); did you mean 'api_addr'?"
    )
    path = write_toml(tmp_path, "[limits]\nmax_frame = 100\n")
    assert error_of(config_file=path, env={}) == (
        f"logplexd: unknown setting 'limits' (from {path})"
    )


def test_bad_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_frame = = 1\n")
    message = error_of(config_file=path, env={})
    assert message.startswith(f"logplexd: invalid config file {str(path)!r} (from --config): ")
    assert "line 1" in message


def test_config_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'log_level = "\xe9"\n')
    assert error_of(config_file=path, env={}) == (
        f"logplexd: invalid config file {str(path)!r} (from --config): not UTF-8"
    )


def test_missing_config_file_named_by_its_source(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert error_of(env={"LOGPLEXD_CONFIG": str(path)}) == (
        f"logplexd: cannot read config file {str(path)!r} (from LOGPLEXD_CONFIG):"
        " No such file or directory"
    )
    assert error_of(config_file=tmp_path, env={}) == (
        f"logplexd: cannot read config file {str(tmp_path)!r} (from --config): Is a directory"
    )


def test_unreadable_config_file() -> None:
    # Root reads any file: the check then runs as nobody, on a file nobody may reach.
    with searchable_dir() as where:
        path = write_toml(where, "max_frame = 100\n")
        path.chmod(0)
        assert unprivileged(error_of, config_file=path, env={}) == (
            f"logplexd: cannot read config file {str(path)!r} (from --config): Permission denied"
        )


# --- the auth key ----------------------------------------------------------------------------


def test_auth_key_sources(tmp_path: Path) -> None:
    assert load_settings(env={"LOGPLEX_AUTH_KEY": SECRET}).auth_key == SECRET
    s = load_settings(env={"LOGPLEXD_AUTH_KEY": f" {SECRET}\n"})
    assert (s.auth_key, s.sources["auth_key"]) == (SECRET, "LOGPLEXD_AUTH_KEY")
    path = write_toml(tmp_path, f'auth_key = "{SECRET}"\n')
    assert load_settings(config_file=path, env={}).auth_key == SECRET
    # The environment beats the file, as for every other setting.
    assert load_settings(config_file=path, env={"LOGPLEX_AUTH_KEY": "other"}).auth_key == "other"
    # Logplex compares the whole Authorization header, so spaces inside are kept.
    assert load_settings(env={"LOGPLEX_AUTH_KEY": "Basic abc"}).auth_key == "Basic abc"


def test_auth_key_is_not_a_flag() -> None:
    with pytest.raises(TypeError):
        load_settings({"auth_key": SECRET}, env={})


def test_auth_key_both_variables_must_agree() -> None:
    assert load_settings(env={"LOGPLEX_AUTH_KEY": SECRET, "LOGPLEXD_AUTH_KEY": SECRET}).auth_key
    message = error_of(env={"LOGPLEX_AUTH_KEY": SECRET, "LOGPLEXD_AUTH_KEY": "other"})
    assert message == (
        "logplexd: LOGPLEX_AUTH_KEY and LOGPLEXD_AUTH_KEY are both set and differ; set only one"
    )
    assert SECRET not in message


def test_bad_auth_key_error_does_not_show_it() -> None:
    message = error_of(env={"LOGPLEX_AUTH_KEY": SECRET + "\x01"})
    assert message == "logplexd: invalid auth_key (from LOGPLEX_AUTH_KEY): must be printable ASCII"
    assert "s3cr3t" not in message


def test_auth_key_not_in_repr() -> None:
    s = load_settings(env={"LOGPLEX_AUTH_KEY": SECRET})
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    assert "auth_key" not in repr(s)


def test_firehose_settings_from_each_layer(tmp_path: Path) -> None:
    assert (Settings().firehose_channel_ids, Settings().firehose_filter_tokens) == ((), ())
    path = write_toml(
        tmp_path, 'firehose_channel_ids = ["fh-1", "fh-2"]\nfirehose_filter_tokens = "heroku"\n'
    )
    s = load_settings(config_file=path, env={})
    assert (s.firehose_channel_ids, s.firehose_filter_tokens) == (("fh-1", "fh-2"), ("heroku",))
    # The original's variable names, and ours; blanks and repeats are dropped.
    env = {"FIREHOSE_CHANNEL_IDS": " a, b,,a ", "LOGPLEXD_FIREHOSE_FILTER_TOKENS": "heroku,app"}
    s = load_settings(env=env)
    assert (s.firehose_channel_ids, s.firehose_filter_tokens) == (("a", "b"), ("heroku", "app"))
    assert s.sources["firehose_channel_ids"] == "FIREHOSE_CHANNEL_IDS"
    s = load_settings({"firehose_channel_ids": "x", "firehose_filter_tokens": "y"}, env=env)
    assert (s.firehose_channel_ids, s.firehose_filter_tokens) == (("x",), ("y",))
    assert load_settings(
        env={
            "FIREHOSE_FILTER_TOKENS": "h",
            "LOGPLEXD_FIREHOSE_FILTER_TOKENS": " h ",
            "FIREHOSE_CHANNEL_IDS": "c",
        }
    ).firehose_filter_tokens == ("h",)


def test_firehose_settings_errors(tmp_path: Path) -> None:
    message = error_of(env={"FIREHOSE_CHANNEL_IDS": "a", "LOGPLEXD_FIREHOSE_CHANNEL_IDS": "b"})
    assert message == (
        "logplexd: FIREHOSE_CHANNEL_IDS and LOGPLEXD_FIREHOSE_CHANNEL_IDS are both set and"
        " differ; set only one"
    )
    assert error_of(env={"FIREHOSE_FILTER_TOKENS": "heroku"}) == (
        "logplexd: firehose_filter_tokens is set (from FIREHOSE_FILTER_TOKENS) but"
        " firehose_channel_ids is not; set both to enable the firehose, or neither"
    )
    assert error_of(flags={"firehose_channel_ids": "fh"}, env={}) == (
        "logplexd: firehose_channel_ids is set (from --firehose-channel-ids) but"
        " firehose_filter_tokens is not; set both to enable the firehose, or neither"
    )
    path = write_toml(tmp_path, "firehose_channel_ids = [1]\n")
    assert error_of(config_file=path, env={}).endswith(
        "expected names separated by commas, or a list of strings"
    )
    assert error_of(flags={"firehose_channel_ids": "a\x01b"}, env={}).endswith(
        "each name must be 1 to 256 printable characters, without a comma"
    )
    path = write_toml(tmp_path, 'firehose_filter_tokens = ["a,b"]\n', "comma.toml")
    assert "without a comma" in error_of(config_file=path, env={})


def test_render_effective_shows_firehose_lists_as_toml_arrays(tmp_path: Path) -> None:
    env = {"FIREHOSE_CHANNEL_IDS": "fh-1,fh-2", "FIREHOSE_FILTER_TOKENS": 'he"roku'}
    s = load_settings(env=env)
    text = render_effective(s)
    assert 'firehose_channel_ids = ["fh-1", "fh-2"]  # from FIREHOSE_CHANNEL_IDS' in text
    assert 'syslog_addr = "127.0.0.1:6001"  # default' in text
    data = tomllib.loads(text)
    assert data["firehose_filter_tokens"] == ['he"roku']
    assert "firehose_channel_ids = []  # default" in render_effective(Settings())


def test_render_effective_masks_auth_key_and_is_valid_toml(tmp_path: Path) -> None:
    s = load_settings({"api_addr": "[::1]:0"}, env={"LOGPLEX_AUTH_KEY": SECRET})
    text = render_effective(s)
    assert SECRET not in text
    assert 'auth_key = "****"  # from LOGPLEX_AUTH_KEY' in text
    data = tomllib.loads(text)
    assert data["api_addr"] == "[::1]:0"
    assert data["auth_key"] == "****"
    # Feeding the output back in gives the same settings (the masked key aside).
    data["auth_key"] = SECRET
    path = tmp_path / "again.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items()))
    again = load_settings(config_file=path, env={})
    assert dataclasses.replace(again, config_file=None, public_url=None) == s


def test_ensure_auth_key_generates_then_reuses(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / "data"
    s = load_settings({"data_dir": str(data_dir)}, env={})
    announced: list[str] = []

    first = ensure_auth_key(s, announce=announced.append)
    key_file = data_dir / "auth_key"
    assert first.auth_key and len(first.auth_key) >= 40
    assert key_file.read_text() == first.auth_key + "\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert first.sources["auth_key"] == str(key_file)
    assert len(announced) == 1
    assert str(key_file.resolve()) in announced[0]
    assert first.auth_key not in announced[0]
    assert first.auth_key not in repr(first)

    mtime = key_file.stat().st_mtime_ns
    second = ensure_auth_key(s, announce=announced.append)
    assert second.auth_key == first.auth_key
    assert len(announced) == 1  # reuse is silent
    assert key_file.stat().st_mtime_ns == mtime


def test_ensure_auth_key_prints_path_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = ensure_auth_key(load_settings({"data_dir": str(tmp_path / "d")}, env={}))
    out, err = capsys.readouterr()
    assert out == ""
    assert str((tmp_path / "d" / "auth_key").resolve()) in err
    assert s.auth_key is not None and s.auth_key not in err


def test_ensure_auth_key_keeps_configured_key(tmp_path: Path) -> None:
    s = load_settings({"data_dir": str(tmp_path / "d")}, env={"LOGPLEX_AUTH_KEY": SECRET})
    assert ensure_auth_key(s, announce=pytest.fail) is s
    assert not (tmp_path / "d").exists()


def test_ensure_auth_key_leaves_existing_data_dir_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    ensure_auth_key(load_settings({"data_dir": str(tmp_path)}, env={}), announce=print)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "auth_key").stat().st_mode) == 0o600


def test_ensure_auth_key_bad_key_file(tmp_path: Path) -> None:
    (tmp_path / "auth_key").write_text("\n")
    with pytest.raises(ConfigError) as info:
        ensure_auth_key(load_settings({"data_dir": str(tmp_path)}, env={}))
    assert str(info.value) == (
        f"logplexd: invalid auth_key (from {tmp_path / 'auth_key'}): must not be empty"
    )


def test_ensure_auth_key_data_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError) as info:
        ensure_auth_key(load_settings(env={"LOGPLEXD_DATA_DIR": str(tmp_path / "f")}))
    assert str(info.value) == (
        f"logplexd: cannot create data_dir {str(tmp_path / 'f')!r} (from LOGPLEXD_DATA_DIR):"
        " File exists"
    )


# --- documentation ---------------------------------------------------------------------------


def test_every_setting_is_documented() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)} - {"config_file", "sources"}
    assert set(SETTING_NAMES) == fields
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for name in SETTING_NAMES:
        assert f"`{name}`" in doc, name
        assert f"`{env_var(name)}`" in doc, name
        if name != "auth_key":
            assert f"`{flag_name(name)}`" in doc, name
    assert "`LOGPLEX_AUTH_KEY`" in doc
    assert "`LOGPLEXD_CONFIG`" in doc


def test_the_links_to_redis_congestion_control_is_a_kernel_name_or_empty() -> None:
    assert load_settings(env={}).redis_tcp_congestion == "cubic"
    s = load_settings(env={"LOGPLEXD_REDIS_TCP_CONGESTION": " "})
    assert s.redis_tcp_congestion == ""  # the system's
    assert load_settings({"redis_tcp_congestion": "reno"}, env={}).redis_tcp_congestion == "reno"
    for bad in ("cu bic", "a" * 16, "bbr;rm", "é"):
        with pytest.raises(ConfigError) as info:
            load_settings({"redis_tcp_congestion": bad}, env={})
        assert "TCP congestion control name" in str(info.value)


def test_session_lifetimes_default_to_the_platform_reference() -> None:
    # "about 5 minutes after creation or about one hour after connecting"
    s = load_settings(env={})
    assert (s.session_url_ttl, s.tail_max_duration) == (300.0, 3600.0)
    assert (s.sources["session_url_ttl"], s.sources["tail_max_duration"]) == ("default",) * 2
    s = load_settings({"session_url_ttl": "60"}, env={"LOGPLEXD_TAIL_MAX_DURATION": "7200"})
    assert (s.session_url_ttl, s.tail_max_duration) == (60.0, 7200.0)
