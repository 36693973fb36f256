"""Write the seed corpus for ``fuzz_framer.py`` into ``fuzz/corpus/framer/``, or with
``--http`` the one for ``fuzz_http.py`` into ``fuzz/corpus/http/``.

Framer seeds: the REFERENCE.md §10 vectors (framed octet-counted, newline-delimited, as HTTP
bodies, cut short, gzipped by mistake...), and the bytes that real ``logger`` (util-linux)
and ``rsyslogd`` (omfwd) write on a TCP connection, captured on a loopback listener. Missing
tools are skipped. Each seed file is ``decode()``-ready: 2 control bytes, then the stream.

HTTP seeds: the framing cases of the HTTP server (``HTTP_CASES``): plain, pipelined,
Content-Length and chunked bodies at and over the limit, Content-Length with
Transfer-Encoding (request smuggling), chunk headers declaring more than the limit (1 GiB,
``ffffffffffffffffff``), malformed heads; each sent by a client that half-closes after
sending and by one that keeps the connection open.

Usage: python fuzz/make_corpus.py [--http] [OUTDIR]
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "framer")

TOK = b"t.d6799f88-4a77-402f-b197-2b722a02cdbc"
VECTORS = [
    # §10.1 test/syslog_parse_SUITE.erl
    b"<158>1 2013-05-27T19:59:36.538297+00:00 node.78286@heroku.com "
    b"t.8ec095b4-8960-39fa-b948-e9e21f27f5de router - - at=info method=POST path=/drain "
    b'host=fakeapp.herokuapp.com fwd="108.21.18.132" dyno=web.1 connect=2ms service=3ms '
    b"status=200 bytes=0",
    b"<13>1 2013-05-27T20:10:25.840515+00:00 runtime.12345@heroku.com "
    b"t.f872fbca-6673-e1a2-556e-6d1090ae13e4 web.123 - - Bid request was invalid. Problem "
    b'field was ["fake", "device"]: {\\"a\\": 1}',
    b"<13>1 2013-05-27T20:10:25.840515+00:00 runtime.12345@heroku.com "
    b't.f872fbca-6673-e1a2-556e-6d1090ae13e4 web.123 - [meta testName="518\\]"] Bid request '
    b'was invalid. Problem field was ["fake", "device"]',
    b"<13>1 2013-05-27T20:33:11.944925+00:00 runtime.45678@heroku.com "
    b"t.aaaaaaaa-ea9b-1c80-fedc-731e6b6045c0 high.47 - - push[foogle_cloud_messaging] "
    b'from:"Group:7189636"',
    b"<133>1 2013-05-24T06:48:51.740194+00:00 host token process - - this is the message",
    b"<133>1 2013-05-24T06:48:51.740194+00:00 host token process - "
    b'[meta sequenceId="518"] this is the message',
    b"<133>1 2013-05-24T06:48:51.740194+00:00 host token process - "
    b'[meta testName="bob\\]"] this is the message',
    b"<133>1 2013-05-24T06:48:51.740194+00:00 host token process - "
    b'[meta sequenceId="518"][meta somethingElse="blah"] this is the message',
    b"<133>1 2013-05-24T06:48:51.740194+00:00 host token process - "
    b'[meta sequenceId="518"][meta somethingElse="blah\\]"] this is the message',
    # §10.2 tcp_proxy_SUITE / README.http_input
    b"<134>1 2012-12-10T04:05:25Z+00:00 erlang " + TOK + b" console.1 - Logsplat test message "
    b"1 from <0.72.0>.",
    b"<133>1 2016-08-24T21:58:41.445160+00:00 ip-10-69-200-199 " + TOK + b" endosome-ssh-1 - "
    b'[meta sequenceId="22984"] Connection from 1.2.3.4\n',
    # §10.3
    b"<158>1 2018-03-02T23:22:34.901697+00:00 hermes.537018@staging.herokudev.com heroku "
    b'router - - at=info code=H81 desc="Blank app" method=GET path="/" status=502 bytes= '
    b"protocol=https",
    b"<1>1 aaaa bbbb cccc dddd eeee - 3f1b7c7e-8a3a-4d1e-9f0e-0123456789ab",
    b"<42> blafasel",
    # Edges of the field grammar
    b"<191>1 t h a p m -",
    b"<192>1 t h a p m - too high",
    b"<013>1 t h a p m [] empty element",
    b"<0>1 t h a p m [a\\",
    b"<1>2 t h a p m - wrong version",
    b"a b c app",
    b"",
]


def octet(p: bytes) -> bytes:
    return b"%d %s" % (len(p), p)


def seed(control: bytes, stream: bytes) -> bytes:
    return control + stream


def vector_seeds() -> list[bytes]:
    framed = b"".join(octet(v) for v in VECTORS if v)
    lines = b"".join(v + b"\n" for v in VECTORS if v.startswith(b"<"))
    out = [
        # byte0 7 -> max_frame 10240; byte1 0 -> no cuts (one read)
        seed(b"\x07\x00", framed),
        seed(b"\x07\x03\x00\x05\x40", framed),  # three short reads, then the rest
        seed(b"\x07\x00", lines),
        seed(b"\x07\x00", b"\r\n".join(VECTORS[9:10] * 5)),  # unframed: all malformed
        seed(b"\x07\x00", framed[:-7]),  # cut short: a body that lies about its length
        seed(b"\x04\x00", framed),  # max_frame 64: oversized frames are skipped
        seed(b"\x01\x00", b"5 hello3 abc\n9 toolong!!1 x"),  # max_frame 2
        seed(b"\x07\x00", b"123456789 x\n0 y\nabc\n12 short"),  # bad headers, resync
        seed(b"\x07\x00", b"\x1f\x8b\x08\x00" + framed[:40]),  # gzip bytes sent raw
    ]
    out += [seed(b"\x07\x00", octet(v)) for v in VECTORS]
    return out


class Capture:
    """A loopback TCP listener keeping every byte of every connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.streams: list[bytearray] = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            buf = bytearray()
            self.streams.append(buf)
            threading.Thread(target=self._read, args=(conn, buf), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, buf: bytearray) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while chunk := conn.recv(65536):
                    buf += chunk
            except OSError:
                pass

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


def logger_seeds() -> list[bytes]:
    if not shutil.which("logger"):
        print("logger not found: skipped", file=sys.stderr)
        return []
    cap = Capture()
    variants = [
        ["--octet-count", "--rfc5424"],
        ["--octet-count", "--rfc5424=notq,notime"],
        ["--rfc5424"],  # newline-delimited ("non-transparent framing")
        ["--octet-count", "--rfc3164"],
        ["--rfc3164"],
        ["--octet-count", "--rfc5424", "--sd-id", "meta@1", "--sd-param", 'k="v\\]"'],
    ]
    for args in variants:
        subprocess.run(
            ["logger", "--tcp", "-n", "127.0.0.1", "-P", str(cap.port), "-t", "web.1"]
            + args
            + ["-p", "local0.notice", "hello from logger [x] \u00e9"],
            check=False,
            timeout=10,
        )
    time.sleep(0.3)
    cap.close()
    return [seed(b"\x07\x00", bytes(s)) for s in cap.streams if s]


RSYSLOG_CONF = """
global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" port="{inport}" address="127.0.0.1")
action(type="omfwd" target="127.0.0.1" port="{outport}" protocol="tcp"
       tcp_framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
action(type="omfwd" target="127.0.0.1" port="{outport}" protocol="tcp"
       template="RSYSLOG_ForwardFormat")
"""


def rsyslog_seeds() -> list[bytes]:
    rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not (os.path.exists(rsyslogd) and shutil.which("logger")):
        print("rsyslogd not found: skipped", file=sys.stderr)
        return []
    cap = Capture()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        inport = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as work:
        conf = os.path.join(work, "rsyslog.conf")
        with open(conf, "w") as f:
            f.write(RSYSLOG_CONF.format(work=work, inport=inport, outport=cap.port))
        proc = subprocess.Popen(
            [rsyslogd, "-n", "-f", conf, "-i", os.path.join(work, "pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", inport), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            for i, msg in enumerate(["via rsyslog", "tab\there", "multi\nline", "[sd] like"]):
                subprocess.run(
                    [
                        "logger",
                        "--tcp",
                        "--octet-count",
                        "--rfc5424",
                        "-n",
                        "127.0.0.1",
                        "-P",
                        str(inport),
                        "-t",
                        f"web.{i}",
                        "-p",
                        "local0.notice",
                        msg,
                    ],
                    check=False,
                    timeout=10,
                )
            time.sleep(1.0)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    time.sleep(0.3)
    cap.close()
    return [seed(b"\x07\x00", bytes(s)) for s in cap.streams if s]


HTTP_OUT = os.path.join(HERE, "corpus", "http")
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST / HTTP/1.1\r\nHost: x\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
# (stream, max_body) -- the server's body limit is 16 bytes unless said otherwise.
HTTP_CASES: list[tuple[bytes, int]] = [
    (GET, 16),
    (GET + GET + b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 16),
    (b"GET / HTTP/1.0\r\n\r\n", 16),
    (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n5\r\nhello\r\n", 16),  # no body, then junk
    (POST + b"Content-Length: 5\r\n\r\nhello" + GET, 16),
    (POST + b"Content-Length: 16\r\n\r\n" + b"x" * 16, 16),
    (POST + b"Content-Length: 17\r\n\r\n" + b"x" * 17, 16),
    (POST + b"Content-Length: 1073741824\r\n\r\n", 16),
    (POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 16),
    (POST + b"Content-Length: 3, 3\r\n\r\nabc", 16),
    (POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 16),
    (POST + b"Content-Length: 10\r\n\r\nshort", 16),
    (CHUNKED + b"5\r\nhello\r\n0\r\n\r\n" + GET, 16),
    (CHUNKED + b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n", 16),
    (CHUNKED + b"10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n" + GET, 16),
    (CHUNKED + b"0000000010\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n", 16),
    (CHUNKED + b"8\r\n12345678\r\n9\r\n", 16),  # the second chunk crosses the limit
    (CHUNKED + b"8\r\n12345678\r\n8\r\n12345678\r\n1\r\nx\r\n0\r\n\r\n", 16),
    (CHUNKED + b"40000000\r\n", 16),  # issue 22: 1 GiB declared, nothing sent
    (CHUNKED + b"40000000\r\n" + b"x" * 100, 1024),
    (CHUNKED + b"ffffffffffffffffff\r\n", 16),
    (CHUNKED + b"ffffffffffffffffffff\r\n", 16),  # 20 digits, h11's longest
    (CHUNKED + b"fffffffffffffffffffff\r\n", 16),  # 21 digits: malformed
    (CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n", 16),
    (CHUNKED + b"5\r\nhelloXX0\r\n\r\n", 16),
    (POST + b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n40000000\r\n", 16),
    (POST + b"Transfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 16),
    (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 16),
    (POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 16),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 16),
    # issue 22: Content-Length with Transfer-Encoding, in both orders, with a request behind
    (
        POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        16,
    ),
    (
        POST + b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        1024,
    ),
    (POST + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + GET, 16),
    (POST + b"Transfer-Encoding: chunked\r\nContent-Length: 1073741824\r\n\r\n", 16),
    (POST + b"Content-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\nhello", 16),
    (POST + b"Transfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc", 16),
    (POST + b"Content-Length: 3\r\nTransfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 16),
    # malformed heads
    (b"GET / HTTP/1.1\r\n\r\n", 16),
    (b"GET / HTTP/1.1\nHost: x\n\n", 16),
    (b"POST / HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello" + CHUNKED + b"0\r\n\r\n", 16),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 16),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 16),
    (POST + b"Content-Length: -1\r\n\r\n", 16),
    (POST + b"Content-Length: +3\r\n\r\nabc", 16),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 16),
    (b"GET / HTTP/1.1\r\nHost: x\r\n", 16),  # never finished
    (b"", 16),
]


def http_seeds() -> list[bytes]:
    sys.path.insert(0, HERE)
    from fuzz_http import seed as http_seed

    return [
        http_seed(stream, max_body=max_body, half_close=half_close)
        for stream, max_body in HTTP_CASES
        for half_close in (True, False)
    ]


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--http"]:
        out = args[1] if len(args) > 1 else HTTP_OUT
        seeds = http_seeds()
    else:
        out = args[0] if args else OUT
        seeds = vector_seeds() + logger_seeds() + rsyslog_seeds()
    os.makedirs(out, exist_ok=True)
    for data in seeds:
        name = hashlib.sha1(data).hexdigest()
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds in {out}")


if __name__ == "__main__":
    main()
