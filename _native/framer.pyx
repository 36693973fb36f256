"""RFC 6587 framing (octet-counted and newline-delimited) and RFC 5424 field location.

The contract, rule by rule, is ``_native/README.md``; ``tests/_reference.py`` is the
pure-Python oracle the property tests hold this module to.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memchr, memcpy, memset

from logplexd._native.batch cimport Batch
from logplexd._native.records cimport (
    F_APPNAME, F_HOSTNAME, F_MSG, F_MSGID, F_PROCID, F_SD, F_TIMESTAMP, MAX_FRAME_LIMIT,
    REC_HAS_APP, REC_VALID, MsgRec,
)

cdef extern from *:
    """
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif

    /* Offsets of the first ``want`` SP bytes of p[0:n] into ends; how many there are.
       A syslog header's six words are short: one compare of 16 bytes at a time and the
       set bits of its mask, instead of a memchr call per word (six calls a frame were 7 %
       of the daemon with 1,000 channels, perf). */
    static inline int framer_spaces(const unsigned char *p, Py_ssize_t n, Py_ssize_t *ends,
                                    int want) {
        int found = 0;
        Py_ssize_t base = 0;
    #if defined(__SSE2__)
        const __m128i sp = _mm_set1_epi8(' ');
        while (base + 16 <= n) {
            unsigned m = (unsigned)_mm_movemask_epi8(
                _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + base)), sp));
            while (m) {
                ends[found++] = base + __builtin_ctz(m);
                if (found == want)
                    return found;
                m &= m - 1;
            }
            base += 16;
        }
    #endif
        while (base < n) {
            const unsigned char *q = memchr(p + base, ' ', (size_t)(n - base));
            if (q == NULL)
                break;
            ends[found++] = q - p;
            if (found == want)
                return found;
            base = (q - p) + 1;
        }
        return found;
    }
    """
    int framer_spaces(const unsigned char* p, Py_ssize_t n, Py_ssize_t* ends, int want) nogil

DEF SP = 32
DEF LF = 10
DEF CR = 13
DEF MAX_LEN_DIGITS = 8

cdef enum Mode:
    MODE_AUTO
    MODE_OCTET
    MODE_LF

cdef enum State:
    ST_BOUNDARY   # octet: before LEN; newline: at a line start (or inside a pending line)
    ST_LEN        # octet: reading LEN digits
    ST_PAYLOAD    # octet: collecting LEN payload bytes
    ST_SKIP_N     # octet: discarding the payload of an oversized frame
    ST_SKIP_LF    # discarding through the next LF (resynchronisation)

DEFAULT_MAX_FRAME = 10240

cdef unsigned char EMPTY[1]


cdef void parse_fields(const unsigned char* p, Py_ssize_t n, MsgRec* rec) noexcept nogil:
    cdef Py_ssize_t i, j, k, start
    cdef int pri, digits, f, words = 0
    cdef int field_ids[5]
    # Where each of the first six SP-separated words ends (its SP, or n for the last): the
    # routing look-up needs words 0-3, the strict header 1-5, found in one pass.
    cdef Py_ssize_t ends[6]
    rec.flags = 0
    rec.pri = -1
    memset(rec.fs, 0, sizeof(rec.fs))
    memset(rec.fl, 0, sizeof(rec.fl))
    words = framer_spaces(p, n, ends, 6)
    if words < 6:
        ends[words] = n   # the last word ends with the frame
        words += 1

    # APP-NAME for routing: the 4th piece when splitting on single SP, valid frame or not.
    if words < 4:
        return
    i = ends[2] + 1
    j = ends[3]
    if j > i:
        rec.flags = REC_HAS_APP
        rec.fs[F_APPNAME] = <unsigned short>i
        rec.fl[F_APPNAME] = <unsigned short>(j - i)

    # Strict header: "<" PRI ">1" SP TS SP HOST SP APP SP PROCID SP MSGID SP SD [SP MSG]
    if n < 4 or p[0] != b'<':
        return
    pri = 0
    digits = 0
    i = 1
    while i < n and digits < 4 and b'0' <= p[i] <= b'9':
        pri = pri * 10 + (p[i] - 48)
        digits += 1
        i += 1
    if digits < 1 or digits > 3 or pri > 191:
        return
    if i + 2 >= n or p[i] != b'>' or p[i + 1] != b'1' or p[i + 2] != SP:
        return
    i += 3   # just past word 0 ("<PRI>1" holds no SP): ends[0] + 1
    field_ids[0] = F_TIMESTAMP
    field_ids[1] = F_HOSTNAME
    field_ids[2] = F_APPNAME
    field_ids[3] = F_PROCID
    field_ids[4] = F_MSGID
    for k in range(5):
        if k + 1 >= words:
            return                # no SP before SD
        j = ends[k + 1]
        if j == i or j >= n:      # empty word, or no SP before SD
            return
        f = field_ids[k]
        rec.fs[f] = <unsigned short>i
        rec.fl[f] = <unsigned short>(j - i)
        i = j + 1
    # STRUCTURED-DATA
    start = i
    if i >= n:
        return
    if p[i] == b'-':
        i += 1
    elif p[i] == b'[':
        while i < n and p[i] == b'[':
            i += 1
            while i < n and p[i] != b']':
                if p[i] == b'\\':
                    i += 1
                i += 1
            if i >= n:
                return          # unterminated element
            i += 1              # past ']'
    else:
        return
    if i < n and p[i] != SP:
        return
    rec.fs[F_SD] = <unsigned short>start
    rec.fl[F_SD] = <unsigned short>(i - start)
    if i < n:
        i += 1
    rec.fs[F_MSG] = <unsigned short>i
    rec.fl[F_MSG] = <unsigned short>(n - i)
    rec.pri = <short>pri
    rec.flags = REC_VALID | REC_HAS_APP


cdef inline int _push_frame(Batch batch, const unsigned char* data, Py_ssize_t length) except -1 nogil:
    cdef MsgRec* rec = batch.push(data, length)
    parse_fields(batch.buf + rec.off, length, rec)
    return 0


cdef class OctetFramer:
    """Incremental framer for one TCP connection: feed chunks, get batches of frames."""

    cdef Py_ssize_t max_frame
    cdef Mode _mode
    cdef State state
    cdef long long len_acc
    cdef int ndigits
    cdef long long skip
    cdef Py_ssize_t want
    cdef unsigned char* pending
    cdef Py_ssize_t pend_n
    cdef public long long malformed
    cdef public long long frames

    def __cinit__(self, Py_ssize_t max_frame=DEFAULT_MAX_FRAME, mode="auto"):
        if max_frame < 1 or max_frame > MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be 1..{MAX_FRAME_LIMIT}")
        self.max_frame = max_frame
        if mode == "auto":
            self._mode = MODE_AUTO
        elif mode == "octet":
            self._mode = MODE_OCTET
        elif mode == "lf":
            self._mode = MODE_LF
        else:
            raise ValueError("mode must be 'auto', 'octet' or 'lf'")
        self.state = ST_BOUNDARY
        # One incomplete frame (plus a CR in newline mode) is all a framer ever holds.
        self.pending = <unsigned char*>PyMem_Malloc(max_frame + 2)
        if self.pending == NULL:
            raise MemoryError()
        self.pend_n = 0
        self.malformed = 0
        self.frames = 0

    def __dealloc__(self):
        PyMem_Free(self.pending)

    @property
    def mode(self):
        return ("auto", "octet", "lf")[<int>self._mode]

    @property
    def buffered(self):
        return self.pend_n

    @property
    def incomplete(self):
        """True when a frame has started but not ended (a body that lies about its length)."""
        if self._mode == MODE_OCTET:
            return self.state == ST_LEN or self.state == ST_PAYLOAD
        return self._mode == MODE_LF and self.state == ST_BOUNDARY and self.pend_n > 0

    def feed(self, data):
        """Frame one chunk; return the complete frames as a Batch."""
        cdef Py_buffer view
        cdef Batch batch = Batch()
        cdef long long malformed_before = self.malformed
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            # Without the GIL: busy connections are framed in worker threads, in parallel
            # with routing on the event loop (logplexd/syslog_input.py). A framer is only
            # ever fed by one thread at a time (its connection's).
            with nogil:
                batch.reserve(view.len + self.pend_n, view.len // 96 + 2)
                self._feed(<const unsigned char*>view.buf, view.len, batch)
        finally:
            PyBuffer_Release(&view)
        self.frames += batch.n
        batch.malformed = <Py_ssize_t>(self.malformed - malformed_before)
        return batch

    cdef int _feed(self, const unsigned char* d, Py_ssize_t n, Batch batch) except -1 nogil:
        cdef Py_ssize_t i = 0
        cdef unsigned char c
        while i < n:
            if self._mode == MODE_AUTO:
                c = d[i]
                if c == CR or c == LF or c == SP:
                    i += 1
                    continue
                self._mode = MODE_LF if c == b'<' else MODE_OCTET
            if self._mode == MODE_OCTET:
                i = self._octet(d, i, n, batch)
            else:
                i = self._lines(d, i, n, batch)
        return 0

    cdef Py_ssize_t _octet(self, const unsigned char* d, Py_ssize_t i, Py_ssize_t n,
                           Batch batch) except -1 nogil:
        cdef unsigned char c
        cdef Py_ssize_t avail, need, take
        cdef const unsigned char* q
        while i < n:
            if self.state == ST_BOUNDARY:
                c = d[i]
                if c == CR or c == LF or c == SP:
                    i += 1
                elif b'1' <= c <= b'9':
                    self.state = ST_LEN
                    self.len_acc = c - 48
                    self.ndigits = 1
                    i += 1
                else:
                    self.malformed += 1
                    self.state = ST_SKIP_LF
            elif self.state == ST_LEN:
                c = d[i]
                if b'0' <= c <= b'9':
                    if self.ndigits == MAX_LEN_DIGITS:
                        self.malformed += 1
                        self.state = ST_SKIP_LF
                    else:
                        self.len_acc = self.len_acc * 10 + (c - 48)
                        self.ndigits += 1
                        i += 1
                elif c == SP:
                    i += 1
                    if self.len_acc <= self.max_frame:
                        self.state = ST_PAYLOAD
                        self.want = <Py_ssize_t>self.len_acc
                        self.pend_n = 0
                    else:
                        self.malformed += 1
                        self.state = ST_SKIP_N
                        self.skip = self.len_acc
                else:
                    # Not consumed: if it is the LF itself, it ends the resync at once.
                    self.malformed += 1
                    self.state = ST_SKIP_LF
            elif self.state == ST_PAYLOAD:
                avail = n - i
                if self.pend_n == 0 and avail >= self.want:
                    _push_frame(batch, d + i, self.want)
                    i += self.want
                    self.state = ST_BOUNDARY
                else:
                    need = self.want - self.pend_n
                    take = need if avail >= need else avail
                    memcpy(self.pending + self.pend_n, d + i, take)
                    self.pend_n += take
                    i += take
                    if self.pend_n == self.want:
                        _push_frame(batch, self.pending, self.want)
                        self.pend_n = 0
                        self.state = ST_BOUNDARY
            elif self.state == ST_SKIP_N:
                take = <Py_ssize_t>min(self.skip, n - i)
                i += take
                self.skip -= take
                if self.skip == 0:
                    self.state = ST_BOUNDARY
            else:  # ST_SKIP_LF
                q = <const unsigned char*>memchr(d + i, LF, n - i)
                if q == NULL:
                    i = n
                else:
                    i = (q - d) + 1
                    self.state = ST_BOUNDARY
        return i

    cdef Py_ssize_t _lines(self, const unsigned char* d, Py_ssize_t i, Py_ssize_t n,
                           Batch batch) except -1 nogil:
        cdef const unsigned char* q
        cdef Py_ssize_t j, rest, total
        cdef const unsigned char* line
        while i < n:
            q = <const unsigned char*>memchr(d + i, LF, n - i)
            if self.state == ST_SKIP_LF:
                if q == NULL:
                    return n
                i = (q - d) + 1
                self.state = ST_BOUNDARY
                continue
            if q == NULL:
                rest = n - i
                total = self.pend_n + rest
                # Too long already, unless the one byte over is a CR that an LF may follow.
                if total > self.max_frame + 1 or (total == self.max_frame + 1
                                                  and d[n - 1] != CR):
                    self.malformed += 1
                    self.pend_n = 0
                    self.state = ST_SKIP_LF
                else:
                    memcpy(self.pending + self.pend_n, d + i, rest)
                    self.pend_n += rest
                return n
            j = q - d
            total = self.pend_n + (j - i)
            if self.pend_n:
                if total <= self.max_frame + 1:
                    memcpy(self.pending + self.pend_n, d + i, j - i)
                line = self.pending
            else:
                line = d + i
            if total > 0 and total <= self.max_frame + 1 and line[total - 1] == CR:
                total -= 1
            if total > self.max_frame:
                self.malformed += 1
            elif total > 0:
                _push_frame(batch, line, total)
            self.pend_n = 0
            i = j + 1
        return i


def parse_body(data, Py_ssize_t max_frame=DEFAULT_MAX_FRAME):
    """Frame one whole ``application/logplex-1`` body (octet-counted only).

    A trailing incomplete frame counts as malformed: the body lies about its length.
    """
    cdef OctetFramer framer = OctetFramer(max_frame, "octet")
    cdef Batch batch = framer.feed(data)
    if framer.incomplete:
        framer.malformed += 1
    batch.malformed = framer.malformed
    return batch


def parse_frames(payloads):
    """A Batch of ready-made payloads (one per item), fields located."""
    cdef Batch batch = Batch()
    cdef const unsigned char[::1] view
    cdef Py_ssize_t length
    for payload in payloads:
        view = payload
        length = view.shape[0]
        if length > MAX_FRAME_LIMIT:
            raise ValueError(f"frame longer than {MAX_FRAME_LIMIT} bytes")
        if length == 0:
            _push_frame(batch, EMPTY, 0)
        else:
            _push_frame(batch, &view[0], length)
    return batch
