"""pytest plugin: count the HTTP requests a test run sends through ``requests``, and 5xx.

For the long schemathesis run of the control API (SECURITY.md):

    LOGPLEXD_TEST_SCHEMA_EXAMPLES=1000 PYTHONPATH=fuzz \
        python -m pytest -p count_requests tests/test_api_schema.py

prints ``HTTP requests sent: {'requests': N, '5xx': 0, 'slowest': seconds}`` at the end.
"""

import time

import requests

COUNT = {"requests": 0, "5xx": 0, "slowest": 0.0}
_orig = requests.Session.send


def send(self, request, **kwargs):
    start = time.monotonic()
    response = _orig(self, request, **kwargs)
    COUNT["requests"] += 1
    COUNT["slowest"] = max(COUNT["slowest"], time.monotonic() - start)
    if response.status_code >= 500:
        COUNT["5xx"] += 1
        print("5xx:", request.method, request.url, response.status_code, response.text[:200])
    return response


requests.Session.send = send  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"HTTP requests sent: {COUNT}")
