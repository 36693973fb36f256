"""Strict mode: where the tests are expected to run whole, a skip is a failure.

.ci/run installs every peer the integration tests need (redis-server, rsyslog, logger,
curl) and runs as root, then sets ``LOGPLEXD_TEST_STRICT=1``. A test that would skip
there has lost its peer, and would otherwise pass unnoticed: under strict mode this
plugin (loaded by tests/conftest.py) turns the skip of any test, and of any module at
collection, into a failure that says so.

A test whose skip CI cannot avoid carries ``@pytest.mark.may_skip(reason=...)`` (with
``when=False`` it is strict after all on this machine); its skip stays a skip, with the
reason printed by ``-ra``. Expected failures (xfail) are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from pluggy import Result

STRICT_ENV = "LOGPLEXD_TEST_STRICT"


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"may_skip(reason, when=True): the test may skip even under {STRICT_ENV}=1 "
        "(it needs what CI cannot always provide)",
    )


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _may_skip(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("may_skip")
    return marker is not None and bool(marker.kwargs.get("when", True))


def _fail(report: pytest.TestReport | pytest.CollectReport) -> None:
    report.longrepr = (
        f"skipped ({_reason(report)}), but {STRICT_ENV}=1 says this must run here: "
        "install what it needs, or mark it may_skip with the reason CI cannot"
    )
    report.outcome = "failed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and strict() and not _may_skip(item):
        _fail(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, Result[pytest.CollectReport], None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and strict():
        _fail(report)
