"""Known-answer tests: vectors from the original Logplex (REFERENCE.md §10) and one case per
rule of ``_native/README.md``, each run against the pure-Python oracle and the native module.

A vector that fails for "native" only is a bug in the Cython code (or an ambiguity in the
README that ``tests/helpers/reference.py`` documents); the oracle must pass everything here.
"""

from __future__ import annotations

import calendar
from typing import Any, Protocol

import pytest

from tests.helpers.reference import (
    ReferenceFramer,
    reference_channel_log_frame,
    reference_fields,
    reference_format_time,
    reference_http_frame,
    reference_l10_http,
    reference_l10_syslog,
    reference_l11_line,
    reference_parse_body,
    reference_session_line,
    reference_session_lines,
    reference_syslog_frame,
)

# --------------------------------------------------------------------------------------------
# The two implementations behind one small interface
# --------------------------------------------------------------------------------------------


class Framer(Protocol):
    malformed: int

    def feed(self, data: bytes) -> tuple[list[bytes], int]: ...


class Impl(Protocol):
    name: str

    def framer(self, max_frame: int = 10240) -> Any: ...
    def body(self, data: bytes, max_frame: int = 10240) -> tuple[list[bytes], int]: ...
    def fields(self, payload: bytes) -> dict[str, object]: ...


class OracleImpl:
    name = "oracle"

    def framer(self, max_frame: int = 10240) -> ReferenceFramer:
        return ReferenceFramer(max_frame=max_frame)

    def body(self, data: bytes, max_frame: int = 10240) -> tuple[list[bytes], int]:
        return reference_parse_body(data, max_frame)

    def fields(self, payload: bytes) -> dict[str, object]:
        return reference_fields(payload)


class NativeFramer:
    """``OctetFramer`` with the oracle's ``feed`` result shape."""

    def __init__(self, max_frame: int) -> None:
        from logplexd._native.framer import OctetFramer

        self.f = OctetFramer(max_frame)

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        batch = self.f.feed(data)
        return batch.frames(), batch.malformed

    @property
    def malformed(self) -> int:
        return self.f.malformed

    @property
    def mode(self) -> str:
        return self.f.mode

    @property
    def buffered(self) -> int:
        return self.f.buffered


class NativeImpl:
    name = "native"

    def framer(self, max_frame: int = 10240) -> NativeFramer:
        return NativeFramer(max_frame)

    def body(self, data: bytes, max_frame: int = 10240) -> tuple[list[bytes], int]:
        from logplexd._native.framer import parse_body

        batch = parse_body(data, max_frame)
        return batch.frames(), batch.malformed

    def fields(self, payload: bytes) -> dict[str, object]:
        from logplexd._native.framer import parse_frames

        return parse_frames([payload]).fields(0)


@pytest.fixture(params=[OracleImpl(), NativeImpl()], ids=lambda i: i.name)
def impl(request: pytest.FixtureRequest) -> Impl:
    return request.param


def stream(impl: Impl, data: bytes, max_frame: int = 10240) -> tuple[list[bytes], int]:
    """A whole TCP stream in one read: (payloads, malformed total)."""
    framer = impl.framer(max_frame)
    frames, _ = framer.feed(data)
    return frames, framer.malformed


def octet(payload: bytes) -> bytes:
    return b"%d %s" % (len(payload), payload)


# --------------------------------------------------------------------------------------------
# REFERENCE.md §10.1: test/syslog_parse_SUITE.erl
# --------------------------------------------------------------------------------------------

ROUTER_MSG = (
    b"at=info method=POST path=/drain host=fakeapp.herokuapp.com "
    b'fwd="108.21.18.132" dyno=web.1 connect=2ms service=3ms status=200 bytes=0'
)
BID_CONTENT = (
    b'Bid request was invalid. Problem field was ["fake", "device"]: {"app"='
    b'>{"aid"=>"7777777777777777777777777777777777", "cat"=>["IE.09", "AAAAA'
    b'", "bbbbbbbbb", "CCCCCCCCCCCCCCCCC"], "global_uid"=>"com.javas.android'
    b'", "name"=>"Javas Android", "paid"=>0, "pid"=>"aplub3B19i1pbmNyEAsSB0F'
    b'gu291rnQY7cCnEc=", "pub"=>"Javas"}, "at"=>2, "device"=>{"dpid"=>"c8e91'
    b'83of3b6dbaaaaaaadf80d22ed2a555555ac", "ip"=>"11.72.3.20", "js"=>1, "lo'
    b'c"=>"-25.6259753934,-44.6876782128", "os"=>"Android", "osv"=>"4.1.1", '
    b'"ua"=>"Mozilla/5.0 (Linux; U; Android 4.1.2; pt-br; GT-I9300 Build/JZO'
    b"54K) AppleWebKit/534.30 (KHTML, like Gecko) Version/4.0 Mobile Safari/"
    b'534.30"}, "id"=>"cccccccc-4444-38de-0c1e-a5fe903e1f1f", "imp"=>[{"api"'
    b'=>3, "battr"=>["91", "1", "24"], "displaymanaserver"=>"4.910.78", "h"='
    b'>50, "impid"=>"eeeeeeee-aaaa-5555-9999-000000000000", "instl"=>0, "w"='
    b'>320}], "pf"=>0.82, "restrictions"=>{"badv"=>["\\".woo/wo/\\"", "\\"/webo'
    b'bjects/\\"", "\\"fbiclient\\"", "\\"ital", "\\"msuserxp\\"", "\\"fbi.chi.metr'
    b'ics.senderaddr\\":", "\\"fbi.nyc.metrics.urla\\",'
)
PUSH_MSG = (
    b'push[foogle_cloud_messaging] from:"Group:7189636" to:"AAAAAAArUM4dAqiulchv2222'
    b"222222223UEmxzaAwFcw69c8VF7ZZZZZZZZZwsRRRRR-=====_NZ-hooooobrrbEHR4XiKc6CLoEEEEEr5cM8Ve"
    b'KriEcccccccz4FuneTXUy5k00000000000000dsthT???????Ow" message_id:"777777784c8c2acf" '
    b'text:"FERDP (HABS): gg gomez we played tuff"'
)
BID_HEAD = (
    b"<13>1 2013-05-27T20:10:25.840515+00:00 runtime.12345@heroku.com "
    b"t.f872fbca-6673-e1a2-556e-6d1090ae13e4 web.123 -"
)
SHORT_HEAD = b"<133>1 2013-05-24T06:48:51.740194+00:00 host token process -"

# (payload, pri, timestamp, hostname, app, procid, sd, msg); MSGID is "-" in all of them.
PARSE_VECTORS = [
    (
        b"<158>1 2013-05-27T19:59:36.538297+00:00 node.78286@heroku.com "
        b"t.8ec095b4-8960-39fa-b948-e9e21f27f5de router - - " + ROUTER_MSG,
        158,
        b"2013-05-27T19:59:36.538297+00:00",
        b"node.78286@heroku.com",
        b"t.8ec095b4-8960-39fa-b948-e9e21f27f5de",
        b"router",
        b"-",
        ROUTER_MSG,
    ),
    (
        BID_HEAD + b" - " + BID_CONTENT,
        13,
        b"2013-05-27T20:10:25.840515+00:00",
        b"runtime.12345@heroku.com",
        b"t.f872fbca-6673-e1a2-556e-6d1090ae13e4",
        b"web.123",
        b"-",
        BID_CONTENT,
    ),
    (
        BID_HEAD + b' [meta testName="518\\]"] ' + BID_CONTENT,
        13,
        b"2013-05-27T20:10:25.840515+00:00",
        b"runtime.12345@heroku.com",
        b"t.f872fbca-6673-e1a2-556e-6d1090ae13e4",
        b"web.123",
        b'[meta testName="518\\]"]',
        BID_CONTENT,
    ),
    (
        b"<13>1 2013-05-27T20:33:11.944925+00:00 runtime.45678@heroku.com "
        b"t.aaaaaaaa-ea9b-1c80-fedc-731e6b6045c0 high.47 - - " + PUSH_MSG,
        13,
        b"2013-05-27T20:33:11.944925+00:00",
        b"runtime.45678@heroku.com",
        b"t.aaaaaaaa-ea9b-1c80-fedc-731e6b6045c0",
        b"high.47",
        b"-",
        PUSH_MSG,
    ),
] + [
    (
        SHORT_HEAD + b" " + sd + b" this is the message",
        133,
        b"2013-05-24T06:48:51.740194+00:00",
        b"host",
        b"token",
        b"process",
        sd,
        b"this is the message",
    )
    for sd in (
        b"-",
        b'[meta sequenceId="518"]',
        b'[meta testName="bob\\]"]',
        b'[meta sequenceId="518"][meta somethingElse="blah"]',
        b'[meta sequenceId="518"][meta somethingElse="blah\\]"]',
    )
]


@pytest.mark.parametrize("vector", PARSE_VECTORS, ids=[f"v{i}" for i in range(len(PARSE_VECTORS))])
def test_syslog_parse_suite(impl: Impl, vector: tuple[Any, ...]) -> None:
    payload, pri, ts, host, app, procid, sd, msg = vector
    assert impl.fields(payload) == {
        "pri": pri,
        "valid": True,
        "has_app": True,
        "timestamp": ts,
        "hostname": host,
        "app": app,
        "procid": procid,
        "msgid": b"-",
        "sd": sd,
        "msg": msg,
    }


def test_syslog_parse_suite_facility_severity(impl: Impl) -> None:
    # from_msg's {Facility, Severity} pairs: 158 -> {19, 6}, 13 -> {1, 5}, 133 -> {16, 5}.
    pris = [impl.fields(v[0])["pri"] for v in PARSE_VECTORS]
    assert [divmod(p, 8) for p in pris] == [(19, 6), (1, 5), (1, 5), (1, 5)] + [(16, 5)] * 5


def test_syslog_parse_suite_through_the_framers(impl: Impl) -> None:
    payloads = [v[0] for v in PARSE_VECTORS]
    body = b"".join(octet(p) for p in payloads)
    assert impl.body(body) == (payloads, 0)
    assert stream(impl, body) == (payloads, 0)


# --------------------------------------------------------------------------------------------
# REFERENCE.md §10.2: framing and input
# --------------------------------------------------------------------------------------------

TOKEN = b"t.d6799f88-4a77-402f-b197-2b722a02cdbc"
TCP_LINES = [
    b"<134>1 2012-12-10T04:05:25Z+00:00 erlang "
    + TOKEN
    + b" console.1 - Logsplat test message %d from <0.72.0>." % n
    for n in range(1, 6)
]


def test_tcp_proxy_suite_octet_counted(impl: Impl) -> None:
    data = b"".join(octet(line) for line in TCP_LINES)
    assert stream(impl, data) == (TCP_LINES, 0)
    for line in TCP_LINES:
        fields = impl.fields(line)
        # "console.1 - Logsplat": MSGID "-", then "Logsplat" is no SD, so drains skip these
        # frames (as the original's drain regex did) but routing still finds the token.
        assert (fields["valid"], fields["has_app"], fields["app"], fields["pri"]) == (
            False,
            True,
            TOKEN,
            -1,
        )


def test_tcp_proxy_suite_crlf_lines_are_newline_delimited(impl: Impl) -> None:
    # The original counted these as malformed; logplexd takes "<" first as RFC 6587
    # non-transparent framing.
    framer = impl.framer()
    frames, bad = framer.feed(b"\r\n".join(TCP_LINES))
    assert (frames, bad, framer.mode) == (TCP_LINES[:4], 0, "lf")
    # The last line has no LF yet: it waits for one.
    assert framer.feed(b"\r\n") == ([TCP_LINES[4]], 0)


def test_crlf_lines_in_an_http_body_are_malformed(impl: Impl) -> None:
    # parse_body is octet-counted only: each "<" line is garbage up to its LF.
    assert impl.body(b"\r\n".join(TCP_LINES)) == ([], 5)
    assert impl.body(b"\r\n".join(TCP_LINES) + b"\r\n") == ([], 5)


def endosome(frac: bytes, proc: bytes, seq: int, app_pid: int, tail: bytes) -> bytes:
    return (
        b"<133>1 2016-08-24T21:58:41.%s+00:00 ip-10-69-200-199 "
        b"t.fe244422-4071-48f1-8192-a28aa99f35cf endosome-%s - "
        b'[meta sequenceId="%d"] app_pid=%d slot=endosome cloud=staging.herokudev.com '
        b"instance_id=192710 endosome version=v74-7-gd7dafe3 "
        b"source=com.herokudev.staging.endosome.192710 pid=7871 "
        b"request_id=0e9a8698-b0a7-4925-a8a9-443555af5f60 %s" % (frac, proc, seq, app_pid, tail)
    )


HEALTH = (
    b"user_agent='ELB-HealthChecker/1.0' content_encoding='' remote='10.183.54.105:48510' fwd=''"
)
LOGS_REST_PAYLOADS = [
    endosome(
        b"445160",
        b"ssh-1",
        22984,
        7915,
        b"http.health.timer.end measure#endosome.http.health.elapsed.seconds=0.000008 \n",
    ),
    endosome(
        b"445323",
        b"web-1",
        22985,
        7840,
        b"http.request.timer.start method=GET path=/health " + HEALTH + b"\n",
    ),
    endosome(b"445323", b"web-1", 22986, 7840, b"http.health.timer.start \n"),
    endosome(
        b"445323",
        b"web-1",
        22987,
        7840,
        b"http.request.timer.end measure#endosome.http.request.elapsed.seconds=0.000049 "
        b"method=GET path=/health " + HEALTH + b" status=200 count#endosome.http.status.2xx=1\n",
    ),
    endosome(b"445323", b"web-1", 22988, 7840, b"count#endosome.endosome.workspaces.open=0\n"),
]


def test_logs_rest_suite_body(impl: Impl) -> None:
    # The suite's body declares these lengths; each frame ends in a counted LF.
    assert [len(p) for p in LOGS_REST_PAYLOADS] == [424, 487, 372, 584, 389]
    body = b"".join(octet(p) for p in LOGS_REST_PAYLOADS)
    assert body.startswith(b"424 <133>1 2016-08-24T21:58:41.445160+00:00 ip-10-69-200-199 ")
    assert impl.body(body) == (LOGS_REST_PAYLOADS, 0)
    for p in LOGS_REST_PAYLOADS:
        f = impl.fields(p)
        assert f["valid"] is True
        assert f["app"] == b"t.fe244422-4071-48f1-8192-a28aa99f35cf"
        assert f["sd"] == p[p.index(b"[meta") : p.index(b"] app_pid") + 1]
        assert f["msg"] == p[p.index(b"] app_pid") + 2 :]


def test_http_input_doc_frame(impl: Impl) -> None:
    msg = (
        b"<134>1 2012-12-10T03:51:41Z+00:00 erlang "
        + TOKEN
        + b" console.1 - Logsplat test message 1 from <0.40.0>."
    )
    assert octet(msg).startswith(b"130 ")
    assert octet(msg + b"\n").startswith(b"131 ")
    assert impl.body(octet(msg) + octet(msg + b"\n")) == ([msg, msg + b"\n"], 0)


def test_log_shuttle_frame(impl: Impl) -> None:
    payload = b"<190>1 2006-01-02T15:04:05.000000+00:00 shuttle token shuttle - - Hello World\n"
    assert octet(payload).startswith(b"78 ")
    assert impl.body(octet(payload)) == ([payload], 0)
    assert impl.fields(payload)["msg"] == b"Hello World\n"


# --------------------------------------------------------------------------------------------
# REFERENCE.md §10.3 and §3.4, §5.5: output formats
# --------------------------------------------------------------------------------------------

H81 = (
    b'at=info code=H81 desc="Blank app" method=GET path="/" '
    b"host=direwolf-d99daa9eda.staging.herokuappdev.com "
    b'request_id=56a11b1c-1f68-4658-80e4-8213a09a81c2 fwd="54.163.94.153" dyno= connect= '
    b"service= status=502 bytes= protocol=https"
)
H81_IN = (
    b"<158>1 2018-03-02T23:22:34.901697+00:00 hermes.537018@staging.herokudev.com "
    b"heroku router - - " + H81
)
H81_OUT = b"290 <158>1 2018-03-02T23:22:34.901697+00:00 host heroku router - " + H81 + b"\n"
UUID = b"0c5cc7a3-2a31-4d8b-9a0e-8e0a3f1c2b7d"


class Encoders(Protocol):
    name: str

    def syslog(self, payloads: list[bytes], token: bytes) -> tuple[bytes, int]: ...
    def http(self, payloads: list[bytes]) -> tuple[bytes, int]: ...
    def channel_logs(self, payloads: list[bytes]) -> tuple[bytes, int]: ...
    def session(
        self, payloads: list[bytes], ps: bytes | None = None, source: bytes | None = None
    ) -> tuple[bytes, int]: ...


def _join(frames: list[bytes | None]) -> tuple[bytes, int]:
    kept = [f for f in frames if f is not None]
    return b"".join(kept), len(kept)


class OracleEncoders:
    name = "oracle"

    def syslog(self, payloads: list[bytes], token: bytes) -> tuple[bytes, int]:
        return _join([reference_syslog_frame(p, token) for p in payloads])

    def http(self, payloads: list[bytes]) -> tuple[bytes, int]:
        return _join([reference_http_frame(p) for p in payloads])

    def channel_logs(self, payloads: list[bytes]) -> tuple[bytes, int]:
        return _join([reference_channel_log_frame(p) for p in payloads])

    def session(
        self, payloads: list[bytes], ps: bytes | None = None, source: bytes | None = None
    ) -> tuple[bytes, int]:
        return reference_session_lines(payloads, ps, source)


class NativeEncoders:
    name = "native"
    # Large enough that the batching limit never splits these small vectors.
    BIG = 1 << 30

    @staticmethod
    def _batch(payloads: list[bytes]) -> Any:
        from logplexd._native.framer import parse_frames

        return parse_frames(payloads)

    def syslog(self, payloads: list[bytes], token: bytes) -> tuple[bytes, int]:
        from logplexd._native.encode import syslog_frames

        out, n, nxt = syslog_frames(self._batch(payloads), token, 0, self.BIG)
        assert nxt == len(payloads)
        return out, n

    def http(self, payloads: list[bytes]) -> tuple[bytes, int]:
        from logplexd._native.encode import http_frames

        out, n, nxt = http_frames(self._batch(payloads), 0, self.BIG)
        assert nxt == len(payloads)
        return out, n

    def channel_logs(self, payloads: list[bytes]) -> tuple[bytes, int]:
        from logplexd._native.encode import channel_log_frames

        return channel_log_frames(self._batch(payloads))

    def session(
        self, payloads: list[bytes], ps: bytes | None = None, source: bytes | None = None
    ) -> tuple[bytes, int]:
        from logplexd._native.encode import session_lines

        return session_lines(self._batch(payloads), ps=ps, source=source)


@pytest.fixture(params=[OracleEncoders(), NativeEncoders()], ids=lambda e: e.name)
def enc(request: pytest.FixtureRequest) -> Encoders:
    return request.param


def test_channel_logs_format(enc: Encoders) -> None:
    assert enc.channel_logs([H81_IN]) == (H81_OUT, 1)


def test_channel_logs_bad_syslog_message(enc: Encoders) -> None:
    stored = [b"<1>1 aaaa bbbb cccc dddd eeee - " + UUID, b"<42> blafasel"]
    assert enc.channel_logs(stored) == (b"64 <1>1 aaaa host cccc dddd - " + UUID + b"\n", 1)


def test_http_drain_doc_example(enc: Encoders) -> None:
    # doc/README.http_drains.md: ten 70-byte frames, Content-Length 730; the LF is the input's.
    payload = b"<174>1 2012-07-22T00:06:26+00:00 somehost erlang console - - Hi from erlang\n"
    frame = b"70 <174>1 2012-07-22T00:06:26+00:00 host erlang console - Hi from erlang\n"
    out, n = enc.http([payload] * 10)
    assert (out, n, len(out)) == (frame * 10, 10, 730)


def test_syslog_drain_format(enc: Encoders) -> None:
    token = b"d.fc6b856b-3332-4546-93de-7d0ee272c3bd"
    p1 = b'<134>1 2012-12-10T03:00:48Z+00:00 erlang app web.1 msgid [a b="c"] hello'
    p2 = b"<13>1 ts h app run.2 - - already ends\n"
    p3 = b"<0>1 ts h app p - -"  # no MSG: the LF still ends the frame
    body1 = b"<134>1 2012-12-10T03:00:48Z+00:00 " + token + b" app web.1 - - hello\n"
    body2 = b"<13>1 ts " + token + b" app run.2 - - already ends\n"
    body3 = b"<0>1 ts " + token + b" app p - - \n"
    expected = b"".join(octet(b) for b in (body1, body2, body3))
    assert enc.syslog([p1, b"garbage", p2, p3], token) == (expected, 3)


@pytest.mark.parametrize(("pri", "shown"), [(b"013", b"13"), (b"00", b"0"), (b"7", b"7")])
def test_syslog_drain_writes_pri_without_leading_zeros(
    enc: Encoders, pri: bytes, shown: bytes
) -> None:
    # The encoder copies "<PRI>1 TS " whole when PRI has no leading zero, and writes it
    # field by field when it has: either way the drain sees the number as the original
    # writes it.
    token = b"d.x"
    payload = b"<" + pri + b">1 2012-12-10T03:00:48Z host app web.1 - - hi"
    expected = octet(b"<" + shown + b">1 2012-12-10T03:00:48Z " + token + b" app web.1 - - hi\n")
    assert enc.syslog([payload], token) == (expected, 1)


def test_http_drain_format_keeps_input_bytes(enc: Encoders) -> None:
    p = b"<190>1 ts h app web.1 id [x] a\r\nb \x00\xff"
    assert enc.http([p]) == (octet(b"<190>1 ts host app web.1 - a\r\nb \x00\xff"), 1)


@pytest.mark.parametrize(
    ("msg", "line_msg"),
    [
        (b"test message 1", b"test message 1"),
        (b"ends in lf\n", b"ends in lf"),
        (b"ends in crlf\r\n", b"ends in crlf"),
        (b"two lfs\n\n", b"two lfs\n"),  # only one LF is removed
        (b"lone cr\r", b"lone cr\r"),  # a CR goes only with the LF after it
        (b"", b""),
    ],
)
def test_session_line(enc: Encoders, msg: bytes, line_msg: bytes) -> None:
    p = b"<134>1 2012-12-10T03:00:48Z+00:00 erlang app console.1 - - " + msg
    expected = b"2012-12-10T03:00:48Z+00:00 app[console.1]: " + line_msg + b"\n"
    assert enc.session([p, b"<42> blafasel"]) == (expected, 1)


def test_session_filters(enc: Encoders) -> None:
    frames = [
        b"<1>1 t h app web.1 - - a",
        b"<1>1 t h app web - - b",
        b"<1>1 t h app web1 - - c",
        b"<1>1 t h app worker.web.1 - - d",
        b"<1>1 t h heroku web.2 - - e",
        b"<1>1 t h app webx.1 - - f",
    ]
    out, n = enc.session(frames, ps=b"web")
    assert (out, n) == (b"t app[web.1]: a\nt app[web]: b\nt heroku[web.2]: e\n", 3)
    out, n = enc.session(frames, source=b"heroku")
    assert (out, n) == (b"t heroku[web.2]: e\n", 1)
    out, n = enc.session(frames, ps=b"web", source=b"app")
    assert (out, n) == (b"t app[web.1]: a\nt app[web]: b\n", 2)


SINCE = calendar.timegm((2014, 11, 7, 23, 29, 45))
NOW = calendar.timegm((2014, 11, 11, 8, 24, 25))
L10_TEXT = (
    b"Error L10 (output buffer overflow): 1 messages dropped since 2014-11-07T23:29:45+00:00."
)


def test_l10_and_l11_oracle() -> None:
    assert reference_format_time(SINCE + 0.9) == b"2014-11-07T23:29:45+00:00"
    assert reference_l10_syslog(b"d.xxx", 1, SINCE, NOW) == octet(
        b"<172>1 2014-11-11T08:24:25+00:00 d.xxx heroku logplex - - " + L10_TEXT + b"\n"
    )
    # REFERENCE §5.5: the HTTP L10 frame of one dropped message is 142 bytes, no LF.
    assert reference_l10_http(1, SINCE, NOW) == (
        b"142 <172>1 2014-11-11T08:24:25+00:00 host heroku logplex - " + L10_TEXT
    )
    assert reference_l11_line(7, SINCE, NOW) == (
        b"2014-11-11T08:24:25+00:00 logplex[1]: Error L11 (Tail buffer overflow) -> "
        b"This tail session dropped 7 messages since 2014-11-07T23:29:45+00:00.\n"
    )


def test_l10_and_l11_native() -> None:
    from logplexd._native import encode

    assert encode.format_time(SINCE + 0.9) == reference_format_time(SINCE)
    assert encode.format_time(0) == b"1970-01-01T00:00:00+00:00"
    assert encode.l10_syslog(b"d.xxx", 1, SINCE, NOW) == reference_l10_syslog(
        b"d.xxx", 1, SINCE, NOW
    )
    assert encode.l10_http(1, SINCE, NOW) == reference_l10_http(1, SINCE, NOW)
    assert encode.l10_http(12345, SINCE, NOW) == reference_l10_http(12345, SINCE, NOW)
    assert encode.l11_line(7, SINCE, NOW) == reference_l11_line(7, SINCE, NOW)


def test_encoders_agree_on_vectors() -> None:
    payloads = [v[0] for v in PARSE_VECTORS] + TCP_LINES + LOGS_REST_PAYLOADS + [H81_IN]
    oracle, native = OracleEncoders(), NativeEncoders()
    assert native.syslog(payloads, b"d.x") == oracle.syslog(payloads, b"d.x")
    assert native.http(payloads) == oracle.http(payloads)
    assert native.channel_logs(payloads) == oracle.channel_logs(payloads)
    assert native.session(payloads) == oracle.session(payloads)
    # Every valid vector is encoded, the five Logsplat lines (no SD) are not.
    assert oracle.http(payloads)[1] == len(PARSE_VECTORS) + len(LOGS_REST_PAYLOADS) + 1
    assert reference_session_line(H81_IN) == (
        b"2018-03-02T23:22:34.901697+00:00 heroku[router]: " + H81 + b"\n"
    )


# --------------------------------------------------------------------------------------------
# Stream framing rules (README "Stream framing")
# --------------------------------------------------------------------------------------------


def test_mode_selection(impl: Impl) -> None:
    cases = [
        (b"3 abc", "octet", [b"abc"], 0),
        (b"\r\n \n3 abc", "octet", [b"abc"], 0),
        (b"<1>x\n", "lf", [b"<1>x"], 0),
        (b" \r\n<1>x\n", "lf", [b"<1>x"], 0),
        (b"junk\n3 abc", "octet", [b"abc"], 1),
        (b"\n\r ", "auto", [], 0),
    ]
    for data, mode, frames, bad in cases:
        framer = impl.framer()
        assert framer.feed(data) == (frames, bad), data
        assert (framer.mode, framer.malformed) == (mode, bad), data


def test_octet_frame_may_arrive_in_pieces(impl: Impl) -> None:
    framer = impl.framer()
    assert framer.feed(b"1") == ([], 0)
    assert framer.feed(b"1") == ([], 0)
    assert framer.feed(b" hello") == ([], 0)
    assert framer.feed(b" worl") == ([], 0)
    assert framer.feed(b"d5 ab") == ([b"hello world"], 0)
    assert framer.feed(b"cde") == ([b"abcde"], 0)
    assert framer.malformed == 0


def test_payload_bytes_are_opaque(impl: Impl) -> None:
    # LF, CR, SP, digits, "<" and NUL inside a counted payload are just payload.
    payload = b"\n12 <1>\r\n\x00 \xff"
    assert stream(impl, octet(payload) + b"3 abc") == ([payload, b"abc"], 0)


def test_separators_between_frames(impl: Impl) -> None:
    data = b"\r\n 3 abc\r\n\n  3 def \r\n\r\n"
    assert stream(impl, data) == ([b"abc", b"def"], 0)
    assert impl.body(data) == ([b"abc", b"def"], 0)


@pytest.mark.parametrize("max_frame", [10, 10240])
def test_oversized_frame_is_skipped_exactly(impl: Impl, max_frame: int) -> None:
    # The skipped payload looks like frames and holds LFs: none of it may leak out.
    filler = b"3 abc\n" * (max_frame // 6 + 1)
    junk = (filler + b"x" * (max_frame + 1))[: max_frame + 1]
    data = octet(junk) + b"2 ok" + octet(b"y" * max_frame)
    expected = ([b"ok", b"y" * max_frame], 1)
    assert stream(impl, data, max_frame) == expected
    assert impl.body(data, max_frame) == expected


def test_oversized_frame_split_across_reads(impl: Impl) -> None:
    framer = impl.framer(10)
    frames, _ = framer.feed(b"20 0123456789")
    assert frames == []
    frames, _ = framer.feed(b"012345678")
    assert frames == []
    frames, _ = framer.feed(b"93 abc")
    assert frames == [b"abc"]
    assert framer.malformed == 1


def test_eight_digit_length_over_max_is_skipped_not_resynced(impl: Impl) -> None:
    framer = impl.framer()
    frames, _ = framer.feed(b"10000000 " + b"\n" * 5000)
    assert frames == []
    # All 10**7 bytes are skipped however they come; LFs in them do not resync.
    for _ in range(9):
        assert framer.feed(b"3 x\n" * 250_000)[0] == []
    frames, _ = framer.feed(b"\n" * 995_000 + b"3 abc")
    assert (frames, framer.malformed) == ([b"abc"], 1)
    # parse_body: cut short, but it is one malformed frame.
    assert impl.body(b"12345678 abc") == ([], 1)


@pytest.mark.parametrize(
    "bad",
    [
        b"123456789 abc",  # a 9th digit
        b"000000003 abc",  # leading zero
        b"0 ",  # length 0 does not exist
        b"12a abc",  # non-digit before the SP
        b"12\tabc",
        b"-3 abc",
        b"hello world",
        b"<13>1 t h a p m - \x00\xff",
    ],
)
def test_garbage_resyncs_to_next_lf(impl: Impl, bad: bytes) -> None:
    # Everything through the LF is dropped, including what looks like a frame.
    data = b"3 abc" + bad + b" 3 xyz 2 no\n2 ok"
    assert stream(impl, data) == ([b"abc", b"ok"], 1)
    assert impl.body(data) == ([b"abc", b"ok"], 1)


def test_resync_ends_at_a_lf_that_is_the_bad_byte(impl: Impl) -> None:
    # README: "a byte other than a digit or SP before the SP: malformed; discard through the
    # next LF". Read here as: the bad byte is where the discard starts, so when the bad byte
    # is the LF itself nothing more is lost (the original read the malformed line from the
    # frame start to its LF the same way).
    assert stream(impl, b"3 abc12\n3 def") == ([b"abc", b"def"], 1)
    assert impl.body(b"12\n3 def") == ([b"def"], 1)


def test_resync_keeps_discarding_across_reads(impl: Impl) -> None:
    framer = impl.framer()
    assert framer.feed(b"3 abc!!") == ([b"abc"], 1)
    for _ in range(100):
        assert framer.feed(b"3 xyz 9 ")[0] == []
    assert framer.buffered <= 16
    frames, _ = framer.feed(b"junk\n3 def")
    assert (frames, framer.malformed) == ([b"def"], 1)


def test_lf_mode_lines(impl: Impl) -> None:
    data = b"<1>a\r\n<2>b\n\r\n\n<3>c\r\r\n\n<4>d e  f\n<5>partial"
    framer = impl.framer()
    # One CR is removed, empty lines (also "\r\n") are skipped, the partial line waits.
    assert framer.feed(data) == ([b"<1>a", b"<2>b", b"<3>c\r", b"<4>d e  f"], 0)
    assert framer.feed(b" line\n") == ([b"<5>partial line"], 0)
    # Not starting with "<" is still a line: only the first byte picks the mode.
    assert framer.feed(b"12 abc\n") == ([b"12 abc"], 0)
    assert framer.malformed == 0


def test_lf_mode_line_length_limit(impl: Impl) -> None:
    data = (
        b"<123456789\n"  # exactly max_frame
        b"<123456789\r\n"  # max_frame plus the CR that is removed
        b"<1234567890\n"  # one byte over: malformed
        b"<123456789\r\r\n"  # the second CR stays, so 11 bytes: malformed
        b"<ok\n"
    )
    assert stream(impl, data, 10) == ([b"<123456789", b"<123456789", b"<ok"], 2)


@pytest.mark.parametrize(
    ("data", "max_frame", "frames", "bad"),
    [
        (b"<123456789\r\n<12345678\r\r\n", 10, [b"<123456789", b"<12345678\r"], 0),
        (b"<123456789\r\r\n<ok\n", 10, [b"<ok"], 1),
        (b"<1234567890\r\n<ok\n", 10, [b"<ok"], 1),
        (b"11 012345678903 abc", 10, [b"abc"], 1),
        (b"10 01234567893 abc", 10, [b"0123456789", b"abc"], 0),
        (b"3 abc123456789 x\n3 def", 10, [b"abc", b"def"], 1),
        (b"3 abc\r\n\r\n3 def12x\n", 10, [b"abc", b"def"], 1),
    ],
)
def test_byte_by_byte(
    impl: Impl, data: bytes, max_frame: int, frames: list[bytes], bad: int
) -> None:
    # A line of max_frame bytes plus CR must not be judged too long before its LF arrives.
    framer = impl.framer(max_frame)
    got = [f for i in range(len(data)) for f in framer.feed(data[i : i + 1])[0]]
    assert (got, framer.malformed) == (frames, bad)


def test_lf_mode_long_line_without_lf_is_dropped_as_it_comes(impl: Impl) -> None:
    framer = impl.framer(100)
    framer.feed(b"<")
    for _ in range(1000):
        assert framer.feed(b"x" * 97 + b"\r")[0] == []
        assert framer.buffered <= 100 + 16
    # When the loss is counted (as soon as it is certain, or at the LF) is not specified.
    assert framer.feed(b"\n<ok\r\n")[0] == [b"<ok"]
    assert framer.malformed == 1


def test_max_frame_limits() -> None:
    from logplexd._native.framer import OctetFramer

    assert stream(NativeImpl(), octet(b"z" * 65000), 65000) == ([b"z" * 65000], 0)
    for bad in (0, 65001):
        with pytest.raises((ValueError, OverflowError)):
            OctetFramer(bad)
        with pytest.raises((ValueError, OverflowError)):
            ReferenceFramer(max_frame=bad)


# --------------------------------------------------------------------------------------------
# parse_body (README "One HTTP body")
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "frames", "bad"),
    [
        (b"", [], 0),
        (b"\r\n", [], 0),
        (b"3 abc", [b"abc"], 0),
        (b"3 abc5 ab", [b"abc"], 1),  # payload cut short
        (b"3 abc12", [b"abc"], 1),  # digits without the SP
        (b"3 abc12 ", [b"abc"], 1),  # header without payload
        (b"3 abc\n", [b"abc"], 0),  # a trailing separator is fine
        (b"<1>1 t h a p m - x\n", [], 1),  # no newline-delimited mode for bodies
        (b"3 abc11 0123456789", [b"abc"], 1),  # oversized, then cut short: counted once
        (b"3 abc11 012345678903 def", [b"abc", b"def"], 1),
    ],
)
def test_parse_body(impl: Impl, body: bytes, frames: list[bytes], bad: int) -> None:
    assert impl.body(body, 10) == (frames, bad)


def test_framer_keeps_what_parse_body_rejects(impl: Impl) -> None:
    framer = impl.framer()
    assert framer.feed(b"3 abc5 ab") == ([b"abc"], 0)
    assert framer.feed(b"cde") == ([b"abcde"], 0)


# --------------------------------------------------------------------------------------------
# Fields (README "Fields")
# --------------------------------------------------------------------------------------------


def valid(pri: int, sd: bytes, msg: bytes, **over: bytes) -> dict[str, object]:
    out: dict[str, object] = {
        "pri": pri,
        "valid": True,
        "has_app": True,
        "timestamp": b"t",
        "hostname": b"h",
        "app": b"a",
        "procid": b"p",
        "msgid": b"m",
        "sd": sd,
        "msg": msg,
    }
    out.update(over)
    return out


def invalid(app: bytes | None) -> dict[str, object]:
    out: dict[str, object] = {"pri": -1, "valid": False, "has_app": app is not None}
    out.update(dict.fromkeys(("timestamp", "hostname", "procid", "msgid", "sd", "msg")))
    out["app"] = app
    return out


FIELD_CASES = [
    # PRI range and shape
    (b"<0>1 t h a p m - x", valid(0, b"-", b"x")),
    (b"<191>1 t h a p m - x", valid(191, b"-", b"x")),
    (b"<192>1 t h a p m - x", invalid(b"a")),
    (b"<999>1 t h a p m - x", invalid(b"a")),
    (b"<1000>1 t h a p m - x", invalid(b"a")),
    (b"<>1 t h a p m - x", invalid(b"a")),
    (b"<1a>1 t h a p m - x", invalid(b"a")),
    (b"1>1 t h a p m - x", invalid(b"a")),
    (b"<-1>1 t h a p m - x", invalid(b"a")),
    # version
    (b"<1>2 t h a p m - x", invalid(b"a")),
    (b"<1>10 t h a p m - x", invalid(b"a")),
    (b"<1> t h a p m - x", invalid(b"a")),
    # header words: one SP each, any non-SP byte
    (b"<1>1  t h a p m - x", invalid(b"h")),
    (b"<1>1 t h  a p m - x", invalid(None)),
    (
        b"<1>1 t\x00\n h\xff a p m - x",
        valid(1, b"-", b"x", timestamp=b"t\x00\n", hostname=b"h\xff"),
    ),
    (b"<1>1 t h a p m", invalid(b"a")),
    (b"<1>1 t h a p m ", invalid(b"a")),
    # SD
    (b"<1>1 t h a p m [x]", valid(1, b"[x]", b"")),
    (b'<1>1 t h a p m [x][y z="1"] hi', valid(1, b'[x][y z="1"]', b"hi")),
    (b'<1>1 t h a p m [x a="\\]"] hi', valid(1, b'[x a="\\]"]', b"hi")),
    (b'<1>1 t h a p m [x a="\\\\"] hi]', valid(1, b'[x a="\\\\"]', b"hi]")),
    (b'<1>1 t h a p m [x a="] b"] hi', valid(1, b'[x a="]', b'b"] hi')),
    (b"<1>1 t h a p m [x y] [z] hi", valid(1, b"[x y]", b"[z] hi")),
    (b"<1>1 t h a p m [x\\] hi", invalid(b"a")),  # never closed
    (b"<1>1 t h a p m [x", invalid(b"a")),
    (b"<1>1 t h a p m x hi", invalid(b"a")),
    (b"<1>1 t h a p m -- hi", invalid(b"a")),
    # missing SP after SD
    (b"<1>1 t h a p m -msg", invalid(b"a")),
    (b"<1>1 t h a p m [x]msg", invalid(b"a")),
    (b"<1>1 t h a p m -[x] msg", invalid(b"a")),
    # MSG: empty, or every remaining byte
    (b"<1>1 t h a p m -", valid(1, b"-", b"")),
    (b"<1>1 t h a p m - ", valid(1, b"-", b"")),
    (b"<1>1 t h a p m -  ", valid(1, b"-", b" ")),
    (b"<1>1 t h a p m - [a] b\n", valid(1, b"-", b"[a] b\n")),
    (b"<1>1 t h a p m - \x00\xff\xfe\xc3(\n\r\x00", valid(1, b"-", b"\x00\xff\xfe\xc3(\n\r\x00")),
    # invalid frames: APP-NAME is the 4th piece of a split on single SPs
    (b"a b c d", invalid(b"d")),
    (b"a b c d e f", invalid(b"d")),
    (b"a b c  d", invalid(None)),
    (b"a b c", invalid(None)),
    (b"a b c ", invalid(None)),
    (b"", invalid(None)),
    (b"<42> blafasel", invalid(None)),
    (b"  x y", invalid(b"y")),
    (b"\x00 \xff \n \xfe\x00", invalid(b"\xfe\x00")),
]


@pytest.mark.parametrize(
    ("payload", "expected"), FIELD_CASES, ids=[repr(c[0]) for c in FIELD_CASES]
)
def test_fields(impl: Impl, payload: bytes, expected: dict[str, object]) -> None:
    assert impl.fields(payload) == expected


def test_fields_pri_with_leading_zeros(impl: Impl) -> None:
    # README: "1 to 3 digits, value 0..191"; nothing forbids a leading zero.
    assert impl.fields(b"<013>1 t h a p m - x") == valid(13, b"-", b"x")
    assert impl.fields(b"<00>1 t h a p m - x") == valid(0, b"-", b"x")


def test_fields_empty_sd_element(impl: Impl) -> None:
    # README: "the element ends at an unescaped ]", so "[]" is one (empty) element.
    assert impl.fields(b"<1>1 t h a p m [] x") == valid(1, b"[]", b"x")


def test_fields_of_framed_batches_match(impl: Impl) -> None:
    # The fields must also be right for frames cut out of a stream or a body.
    payloads = [c[0] for c in FIELD_CASES if c[0]]
    body = b"".join(octet(p) for p in payloads)
    if impl.name == "native":
        from logplexd._native.framer import OctetFramer, parse_body

        for batch in (parse_body(body), OctetFramer().feed(body)):
            assert [batch.fields(i) for i in range(len(batch))] == [
                reference_fields(p) for p in payloads
            ]
    else:
        assert impl.body(body) == (payloads, 0)
