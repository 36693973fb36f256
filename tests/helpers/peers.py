"""The real programs the integration tests drive, and a skip mark for each when it is missing.

.ci/run installs every one of them (systemd-analyze where it can) and runs the tests with
``LOGPLEXD_TEST_STRICT=1``, under which such a skip is a failure (helpers/strict.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CURL = shutil.which("curl")
LOGGER = shutil.which("logger")  # util-linux
RSYSLOGD = shutil.which("rsyslogd") or (
    "/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None
)
# rsyslog's openssl network driver (package rsyslog-openssl), for TLS into imtcp.
RSYSLOG_TLS = any(Path("/usr/lib").glob("*/rsyslog/lmnsd_ossl.so"))
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

needs_curl = pytest.mark.skipif(CURL is None, reason="curl not installed")
needs_logger = pytest.mark.skipif(LOGGER is None, reason="util-linux logger not installed")
needs_rsyslogd = pytest.mark.skipif(
    RSYSLOGD is None, reason="rsyslogd not installed (apt-get install rsyslog)"
)


def logger_command(
    port: int, tag: str, text: str, *options: str, octet_count: bool = True
) -> list[str]:
    """util-linux logger sending one RFC 5424 message ``text`` with APP-NAME ``tag`` over
    TCP to 127.0.0.1:``port``, octet-counted unless ``octet_count`` is false."""
    framing = ["--octet-count"] if octet_count else []
    head = ["logger", "--tcp", *framing, "--rfc5424", "-n", "127.0.0.1", "-P", str(port)]
    return [*head, "-t", tag, *options, text]
