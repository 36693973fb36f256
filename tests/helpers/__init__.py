"""Code the test modules share. A test module never imports another test module
(tests/test_layout.py checks it): what two of them need lives here, one module per concern.

* ``syslog``: RFC 5424 messages and octet-counted frames as producers send them.
* ``net``: free loopback ports, waiting for a peer to accept.
* ``wait``: polling a condition with a deadline.
* ``daemon``: a whole daemon on loopback ports (settings, the auth key ``KEY``).
* ``http``: an HTTP/1.1 client for that daemon, Basic credentials.
* ``metrics``: its ``/metrics``, parsed.
* ``curl``: the same daemon driven by the real curl.
* ``api``: the control API without sockets (``make_api``, ``call``, ``FakeRegistry``).
* ``drains``: receivers for drains (syslog and HTTP sinks) and a running ``DrainManager``.
* ``tls``: server certificates (a context, or PEM files) and client contexts from a test CA.
* ``redis``: real redis-server processes and Redis Clusters.
* ``cluster``: several daemons on one Redis (node settings, numbered messages, a TCP sink).
* ``store``: a populated store and a comparable picture of its state.
* ``reference``: the pure-Python parser the native one is held to (also used by fuzz/, bench/).
* ``peers``: the real programs the integration tests drive, a skip mark for each.
* ``heroku_cli``: the real heroku CLI (npm), installed once, and its environment against a
  daemon.
* ``strict``: the pytest plugin for ``LOGPLEXD_TEST_STRICT=1`` (.ci/run), under which a skip
  fails unless the test is marked ``may_skip``.
* ``privileges``: a check run without root's power to read any file.

Fixtures live in tests/conftest.py.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
