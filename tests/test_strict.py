"""Strict mode (helpers/strict.py): under LOGPLEXD_TEST_STRICT=1 a skip fails, unless the test
is marked ``may_skip``. Shown on generated test files run by pytester, so that the hook can
never quietly do nothing."""

from __future__ import annotations

import pytest

from tests.helpers.strict import STRICT_ENV

SKIPPING = """
import pytest

@pytest.fixture
def peer():
    pytest.skip("no peer in the fixture")

def test_runs():
    pass

@pytest.mark.skipif(True, reason="no peer for the mark")
def test_skipif():
    pass

def test_skip_in_the_test():
    pytest.skip("no peer in the test")

def test_skip_in_a_fixture(peer):
    pass

@pytest.mark.may_skip(reason="CI cannot provide it")
def test_may_skip():
    pytest.skip("no such thing here")

@pytest.mark.may_skip(when=False, reason="only elsewhere")
def test_may_skip_elsewhere():
    pytest.skip("missing here")

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False
"""

MODULE_SKIP = """
import pytest

pytest.importorskip("no_such_module_for_logplexd_tests")

def test_never_collected():
    pass
"""


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, strict: str | None, src: str):
    if strict is None:
        monkeypatch.delenv(STRICT_ENV, raising=False)
    else:
        monkeypatch.setenv(STRICT_ENV, strict)
    pytester.makepyfile(test_generated=src)
    return pytester.runpytest("-p", "tests.helpers.strict", "-p", "no:cacheprovider", "-rA")


@pytest.mark.parametrize("strict", [None, "", "0"])
def test_without_strict_mode_a_skip_is_a_skip(pytester, monkeypatch, strict):
    result = run(pytester, monkeypatch, strict, SKIPPING)
    result.assert_outcomes(passed=1, skipped=5, xfailed=1)


def test_strict_mode_fails_every_skip_but_the_allowed_one(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "1", SKIPPING)
    # A skip while setting up (skipif mark, fixture) is an error; in the test, a failure.
    result.assert_outcomes(passed=1, skipped=1, failed=2, errors=2, xfailed=1)
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED [[]1[]] test_generated.py:*: no such thing here",
            "ERROR test_generated.py::test_skipif - *",
            "ERROR test_generated.py::test_skip_in_a_fixture - *",
            "FAILED test_generated.py::test_skip_in_the_test - *",
            "FAILED test_generated.py::test_may_skip_elsewhere - *",
            "PASSED test_generated.py::test_runs",
            "XFAIL test_generated.py::test_xfail*",
        ]
    )
    # The failure says what was skipped and why it counts.
    result.stdout.fnmatch_lines(
        [f"*skipped (no peer in the test), but {STRICT_ENV}=1 says this must run here*"]
    )


def test_strict_mode_fails_a_module_skipped_at_collection(pytester, monkeypatch):
    assert run(pytester, monkeypatch, None, MODULE_SKIP).ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result = run(pytester, monkeypatch, "1", MODULE_SKIP)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"skipped (could not import 'no_such_module_for_logplexd_tests'*), but {STRICT_ENV}=1 *"]
    )
