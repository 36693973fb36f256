"""Output formats, byte-compatible with the original Logplex (REFERENCE.md §3.4, §5.5).

Each encoder writes a whole batch into one output buffer. Frames that are not valid
RFC 5424 are skipped, as the original's drain and session parsers skipped them.
"""

import time as _time

from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport uint64_t
from libc.string cimport memcmp

from logplexd._native.batch cimport Batch
from logplexd._native.out cimport (
    Out, out_finish, out_free, out_init, out_ndigits, out_need, out_put, out_put_uint,
)
from logplexd._native.records cimport (
    F_APPNAME, F_HOSTNAME, F_MSG, F_PROCID, F_TIMESTAMP, REC_VALID, MsgRec,
)
from logplexd._native.ring cimport ChannelRing

DEF LF = 10
DEF CR = 13


cdef inline Py_ssize_t _field(const MsgRec* r, int f) noexcept:
    return r.fl[f]


cdef inline int _put_frame(Out* o, const char* p, const MsgRec* r, const char* host,
                           Py_ssize_t host_len, bint syslog_style, bint add_lf_always,
                           Py_ssize_t max_bytes, Py_ssize_t* count) except -1:
    """Write one valid frame (payload at ``p``); 0 when it would pass ``max_bytes`` after
    at least one frame (nothing written), else 1.

    syslog_style: ``<PRI>1 TS HOST APP PROCID - - MSG`` plus LF when MSG lacks one;
    otherwise ``<PRI>1 TS HOST APP PROCID - MSG`` (no SD), with LF only if add_lf_always.
    """
    cdef Py_ssize_t body, msg_len = r.fl[F_MSG]
    cdef bint lf
    if syslog_style:
        lf = msg_len == 0 or p[r.fs[F_MSG] + msg_len - 1] != LF
    else:
        lf = add_lf_always
    # "<" PRI ">1 " TS " " HOST " " APP " " PROCID (" - - " | " - ") MSG [LF]
    body = (1 + out_ndigits(r.pri) + 3 + r.fl[F_TIMESTAMP] + 1 + host_len + 1
            + r.fl[F_APPNAME] + 1 + r.fl[F_PROCID] + (5 if syslog_style else 3)
            + msg_len + (1 if lf else 0))
    if count[0] > 0 and o.n + out_ndigits(body) + 1 + body > max_bytes:
        return 0
    out_need(o, out_ndigits(body) + 1 + body)
    out_put_uint(o, body)
    out_put(o, b" ", 1)
    if r.fs[F_TIMESTAMP] == 4 + out_ndigits(r.pri):
        # "<" PRI ">1 " TS " " as it came (no leading zero in PRI): one copy, and
        # "APP SP PROCID" another (a copy call per field was most of this function).
        out_put(o, p, r.fs[F_HOSTNAME])
    else:
        out_put(o, b"<", 1)
        out_put_uint(o, r.pri)
        out_put(o, b">1 ", 3)
        out_put(o, p + r.fs[F_TIMESTAMP], r.fl[F_TIMESTAMP])
        out_put(o, b" ", 1)
    out_put(o, host, host_len)
    out_put(o, b" ", 1)
    out_put(o, p + r.fs[F_APPNAME], r.fs[F_PROCID] + r.fl[F_PROCID] - r.fs[F_APPNAME])
    if syslog_style:
        out_put(o, b" - - ", 5)
    else:
        out_put(o, b" - ", 3)
    out_put(o, p + r.fs[F_MSG], msg_len)
    if lf:
        out_put(o, b"\n", 1)
    count[0] += 1
    return 1


cdef Py_ssize_t _drain_frames(Batch batch, const char* host, Py_ssize_t host_len,
                              bint syslog_style, bint add_lf_always, Py_ssize_t start,
                              Py_ssize_t max_bytes, Py_ssize_t* count, Out* o) except -2:
    """Shared writer of the drain-style formats (``_put_frame``); returns the next unread
    index."""
    cdef Py_ssize_t i = start
    cdef const MsgRec* r
    while i < batch.n:
        r = &batch.recs[i]
        if r.flags & REC_VALID:
            if not _put_frame(o, <const char*>batch.buf + r.off, r, host, host_len,
                              syslog_style, add_lf_always, max_bytes, count):
                break
        i += 1
    return i


def syslog_frames(Batch batch not None, bytes drain_token not None, Py_ssize_t start=0,
                  Py_ssize_t max_bytes=4096):
    """Octet-counted syslog drain frames from ``start``: (bytes, count, next_index).

    Stops before ``max_bytes`` would be exceeded, but always takes at least one frame.
    """
    cdef Out o
    cdef Py_ssize_t count = 0, nxt
    out_init(&o, min(batch.nbytes + batch.n * 64, max_bytes + 16384))
    try:
        nxt = _drain_frames(batch, PyBytes_AS_STRING(drain_token), len(drain_token), True,
                            False, start, max_bytes, &count, &o)
    except BaseException:
        out_free(&o)
        raise
    return out_finish(&o), count, nxt


def syslog_frames_from_ring(ChannelRing ring not None, unsigned long long cursor,
                            Py_ssize_t max_messages, bytes drain_token not None,
                            Py_ssize_t max_bytes=4096):
    """``syslog_frames`` of the ring's messages from ``cursor`` on (at most
    ``max_messages``), read where they lie: no batch is copied out of the ring first.

    Returns (bytes, count, next_cursor, lost): ``lost`` counts messages the ring dropped
    before ``cursor`` was read (as ``ChannelRing.read``); frames that are not valid RFC 5424
    are passed over (``next_cursor`` is past them, ``count`` does not include them).
    """
    cdef Out o
    cdef Py_ssize_t count = 0, avg
    cdef uint64_t s = cursor, end
    cdef unsigned long long lost = 0
    cdef const MsgRec* r
    cdef const char* host = PyBytes_AS_STRING(drain_token)
    cdef Py_ssize_t host_len = len(drain_token)
    s = ring.read_start(s, &lost)
    end = ring.head
    if max_messages >= 0 and end - s > <uint64_t>max_messages:
        end = s + max_messages
    avg = ring.used // (ring.head - ring.tail) if ring.head > ring.tail else 0
    out_init(&o, min(<Py_ssize_t>(end - s) * (avg + host_len + 16), max_bytes + 16384))
    try:
        while s < end:
            r = &ring.slots[s & ring.slot_mask]
            if r.flags & REC_VALID:
                if not _put_frame(&o, <const char*>ring.arena + r.off, r, host, host_len,
                                  True, False, max_bytes, &count):
                    break
            s += 1
    except BaseException:
        out_free(&o)
        raise
    return out_finish(&o), count, s, lost


def http_frames(Batch batch not None, Py_ssize_t start=0, Py_ssize_t max_bytes=102400):
    """HTTP drain frames (no SD, no LF added): (bytes, count, next_index)."""
    cdef Out o
    cdef Py_ssize_t count = 0, nxt
    out_init(&o, min(batch.nbytes + batch.n * 64, max_bytes + 16384))
    try:
        nxt = _drain_frames(batch, b"host", 4, False, False, start, max_bytes, &count, &o)
    except BaseException:
        out_free(&o)
        raise
    return out_finish(&o), count, nxt


def channel_log_frames(Batch batch not None):
    """``GET /v3/channels/:ch/logs`` frames (HTTP drain format plus a counted LF)."""
    cdef Out o
    cdef Py_ssize_t count = 0
    out_init(&o, batch.nbytes + batch.n * 64)
    try:
        _drain_frames(batch, b"host", 4, False, True, 0, <Py_ssize_t>1 << 62, &count, &o)
    except BaseException:
        out_free(&o)
        raise
    return out_finish(&o), count


cdef inline bint _ps_matches(const char* procid, Py_ssize_t n, const char* ps,
                             Py_ssize_t ps_len) noexcept:
    if n < ps_len or memcmp(procid, ps, ps_len) != 0:
        return False
    return n == ps_len or procid[ps_len] == b'.'


cdef inline bint _session_match(const MsgRec* r, const char* p, const char* ps_p,
                                Py_ssize_t ps_len, const char* src_p,
                                Py_ssize_t src_len) noexcept:
    if not (r.flags & REC_VALID):
        return False
    if ps_p != NULL and not _ps_matches(p + r.fs[F_PROCID], r.fl[F_PROCID], ps_p, ps_len):
        return False
    if src_p != NULL and (r.fl[F_APPNAME] != src_len
                          or memcmp(p + r.fs[F_APPNAME], src_p, src_len) != 0):
        return False
    return True


cdef Py_ssize_t _breaks(const char* p, Py_ssize_t n) noexcept:
    """Line breaks in ``p[:n]``: CR, LF, and CRLF counted once."""
    cdef Py_ssize_t i = 0, count = 0
    while i < n:
        if p[i] == CR:
            count += 1
            if i + 1 < n and p[i + 1] == LF:
                i += 1
        elif p[i] == LF:
            count += 1
        i += 1
    return count


cdef void _put_event_data(Out* o, const char* p, Py_ssize_t n) noexcept:
    """``p[:n]`` with each break (CR, LF, CRLF) made ``LF "data: "``: the next data line of
    the same server-sent event. Room for ``n + 6 * _breaks(p, n)`` bytes must be reserved."""
    cdef Py_ssize_t i = 0, start = 0
    while i < n:
        if p[i] == CR or p[i] == LF:
            out_put(o, p + start, i - start)
            out_put(o, b"\ndata: ", 7)
            if p[i] == CR and i + 1 < n and p[i + 1] == LF:
                i += 1
            start = i + 1
        i += 1
    out_put(o, p + start, n - start)


def session_lines(Batch batch not None, ps=None, source=None, Py_ssize_t last=-1,
                  bint sse=False):
    """Session/tail text ``TS APP[PROCID]: MSG\\n``, optionally filtered: (bytes, count).

    ``ps`` matches PROCID exactly or as a prefix before a dot (``web`` matches ``web.1``);
    ``source`` matches APP-NAME exactly. With ``last`` >= 0, only the newest ``last``
    matching lines are written. With ``sse`` each line is a server-sent event instead:
    ``"data: " TS APP[PROCID]: MSG LF LF``, every trailing CR and LF of MSG dropped and every
    break inside the line (CR, LF, CRLF) written as ``LF "data: "``.
    """
    cdef Out o
    cdef Py_ssize_t i, count = 0, msg_len, ps_len = 0, src_len = 0
    cdef const MsgRec* r
    cdef const char* p
    cdef const char* msg
    cdef const char* ps_p = NULL
    cdef const char* src_p = NULL
    if ps is not None:
        ps_p = PyBytes_AS_STRING(ps)
        ps_len = len(ps)
    if source is not None:
        src_p = PyBytes_AS_STRING(source)
        src_len = len(source)
    cdef Py_ssize_t skip = 0
    if last >= 0:
        for i in range(batch.n):
            r = &batch.recs[i]
            if _session_match(r, <const char*>batch.buf + r.off, ps_p, ps_len, src_p, src_len):
                skip += 1
        skip = skip - last if skip > last else 0
    out_init(&o, batch.nbytes + batch.n * 8)
    try:
        for i in range(batch.n):
            r = &batch.recs[i]
            p = <const char*>batch.buf + r.off
            if not _session_match(r, p, ps_p, ps_len, src_p, src_len):
                continue
            if skip:
                skip -= 1
                continue
            msg = p + r.fs[F_MSG]
            msg_len = r.fl[F_MSG]
            if sse:
                while msg_len and (msg[msg_len - 1] == LF or msg[msg_len - 1] == CR):
                    msg_len -= 1
                _session_event(&o, p, r, msg, msg_len)
                count += 1
                continue
            if msg_len and msg[msg_len - 1] == LF:
                msg_len -= 1
                if msg_len and msg[msg_len - 1] == CR:
                    msg_len -= 1
            out_need(&o, r.fl[F_TIMESTAMP] + r.fl[F_APPNAME] + r.fl[F_PROCID] + msg_len + 6)
            out_put(&o, p + r.fs[F_TIMESTAMP], r.fl[F_TIMESTAMP])
            out_put(&o, b" ", 1)
            out_put(&o, p + r.fs[F_APPNAME], r.fl[F_APPNAME])
            out_put(&o, b"[", 1)
            out_put(&o, p + r.fs[F_PROCID], r.fl[F_PROCID])
            out_put(&o, b"]: ", 3)
            out_put(&o, msg, msg_len)
            out_put(&o, b"\n", 1)
            count += 1
    except BaseException:
        out_free(&o)
        raise
    return out_finish(&o), count


cdef int _session_event(Out* o, const char* p, const MsgRec* r, const char* msg,
                        Py_ssize_t msg_len) except -1:
    """One session line as a server-sent event (see ``session_lines``)."""
    cdef const char* ts = p + r.fs[F_TIMESTAMP]
    cdef const char* app = p + r.fs[F_APPNAME]
    cdef const char* procid = p + r.fs[F_PROCID]
    cdef Py_ssize_t breaks = (_breaks(ts, r.fl[F_TIMESTAMP]) + _breaks(app, r.fl[F_APPNAME])
                              + _breaks(procid, r.fl[F_PROCID]) + _breaks(msg, msg_len))
    out_need(o, r.fl[F_TIMESTAMP] + r.fl[F_APPNAME] + r.fl[F_PROCID] + msg_len
              + 6 * breaks + 13)
    out_put(o, b"data: ", 6)
    _put_event_data(o, ts, r.fl[F_TIMESTAMP])
    out_put(o, b" ", 1)
    _put_event_data(o, app, r.fl[F_APPNAME])
    out_put(o, b"[", 1)
    _put_event_data(o, procid, r.fl[F_PROCID])
    out_put(o, b"]: ", 3)
    _put_event_data(o, msg, msg_len)
    out_put(o, b"\n\n", 2)
    return 0


# -- Logplex's own notices (rare: plain Python formatting is fine here) -------------------

def format_time(double epoch_seconds):
    """Logplex's own timestamp format: ``YYYY-MM-DDTHH:MM:SS+00:00`` (UTC, no fraction)."""
    return _time.strftime("%Y-%m-%dT%H:%M:%S+00:00", _time.gmtime(epoch_seconds)).encode()


def _l10_text(n, since):
    return (f"Error L10 (output buffer overflow): {int(n)} messages dropped since ".encode()
            + format_time(since) + b".")


def l10_syslog(bytes drain_token not None, n, double since, double now):
    """The L10 frame a syslog drain sends first after losing ``n`` messages."""
    body = (b"<172>1 " + format_time(now) + b" " + drain_token + b" heroku logplex - - "
            + _l10_text(n, since) + b"\n")
    return str(len(body)).encode() + b" " + body


def l10_http(n, double since, double now):
    """The L10 frame an HTTP drain prepends (no SD, no trailing LF, as the original)."""
    body = b"<172>1 " + format_time(now) + b" host heroku logplex - " + _l10_text(n, since)
    return str(len(body)).encode() + b" " + body


def l11_line(n, double since, double now):
    """The L11 line a lapped tail session receives."""
    return (format_time(now) + b" logplex[1]: Error L11 (Tail buffer overflow) -> "
            + f"This tail session dropped {int(n)} messages since ".encode()
            + format_time(since) + b".\n")
