"""RESP, the Redis protocol, without I/O: commands to bytes, reply bytes to replies.

The data plane's frequent Redis calls (every flush's ``APPEND`` with ~10 arguments per
channel, the replies with a few items per channel, the followers' reads) go over
connections of their own (``logplexd/cluster/_direct.py``); packing and parsing them in
Python took ~14 % of a node's CPU with 1,000 busy channels.

Replies are RESP2 (the connections never ask for RESP3): a simple string and a bulk string
are ``bytes`` (a null bulk string ``None``), an integer ``int``, an array a ``list`` (a null
array ``None``), and an error a ``RespError`` *value* in its place: one refused command
does not hide the other replies of a pipeline. Input that is not RESP, or declares more than
the bounds below, raises ``RespProtocolError`` (the connection is then unusable).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memchr, memcpy, memmove

from logplexd._native.out cimport Out, out_finish, out_free, out_init, out_need, out_put

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

# Bounds on what a reply may declare (Redis's own ``proto-max-bulk-len`` default is 512 MB):
# anything larger is not a reply these connections asked for.
MAX_BULK_BYTES = 512 * 1024 * 1024
MAX_ARRAY_ITEMS = 1 << 24
# A header line (type and length, or a simple string, or an error) longer than this is
# garbage; arrays nested deeper than MAX_DEPTH too (an XREAD reply is 4 deep).
MAX_LINE_BYTES = 64 * 1024
MAX_DEPTH = 32
# Consumed input kept before the buffer is compacted, and the most a reader keeps of its
# buffer once everything in it was parsed.
DEF COMPACT_AFTER = 262144
DEF KEEP_BUFFER = 4194304
DEF DEPTH = 32


class RespError(Exception):
    """An error reply (``-ERR ...``, ``-NOSCRIPT ...``, ``-MOVED ...``), as a value."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message

    @property
    def kind(self):
        """Its first word: ``ERR``, ``NOSCRIPT``, ``MOVED``, ``ASK``, ``WRONGTYPE``, ..."""
        return self.message.split(" ", 1)[0]


class RespProtocolError(ConnectionError):
    """The server sent something that is not RESP: the connection cannot be used again."""


# What ``RespReader.next_reply`` returns while no whole reply is buffered.
NEED_DATA = object()


cdef inline int _format(long long v, char* out) noexcept:
    """``v`` in decimal into ``out`` (at least 21 bytes); how many bytes."""
    cdef char tmp[24]
    cdef int k = 0, n = 0
    cdef unsigned long long u
    if v < 0:
        out[0] = b'-'
        n = 1
        u = <unsigned long long>(-(v + 1)) + 1
    else:
        u = <unsigned long long>v
    while True:
        tmp[k] = <char>(48 + u % 10)
        u //= 10
        k += 1
        if u == 0:
            break
    while k > 0:
        k -= 1
        out[n] = tmp[k]
        n += 1
    return n


cdef inline void _put_header(Out* o, char kind, long long v) noexcept:
    # "<kind><v>\r\n"; room checked by the caller (24 bytes).
    o.buf[o.n] = kind
    o.n += 1 + _format(v, o.buf + o.n + 1)
    o.buf[o.n] = b'\r'
    o.buf[o.n + 1] = b'\n'
    o.n += 2


cdef const char* _arg_bytes(object arg, Py_ssize_t* n, char* digits) except NULL:
    """The bytes of one argument (``digits``: room for an int's), and their number."""
    cdef long long v
    cdef const unsigned char[::1] view
    kind = type(arg)
    if kind is bytes:
        n[0] = PyBytes_GET_SIZE(arg)
        return PyBytes_AS_STRING(arg)
    if kind is str:
        return PyUnicode_AsUTF8AndSize(arg, n)
    if kind is int or (isinstance(arg, int) and not isinstance(arg, bool)):
        v = arg  # OverflowError past 64 bits
        n[0] = _format(v, digits)
        return digits
    if isinstance(arg, (bytes, bytearray, memoryview)):
        # (A view's memory stays valid while ``arg`` lives: the caller holds it.)
        view = arg
        n[0] = view.shape[0]
        return <const char*>&view[0] if n[0] else digits
    if isinstance(arg, str):
        return PyUnicode_AsUTF8AndSize(arg, n)
    raise TypeError(f"a Redis argument cannot be {type(arg).__name__}")


cdef inline bint _by_reference(object arg, Py_ssize_t n, Py_ssize_t large):
    # Only what can be sent as it is: bytes-like (a str, or a str subclass, is encoded).
    return n >= large and isinstance(arg, (bytes, bytearray, memoryview))


def pack_pipeline(commands, Py_ssize_t large=65536):
    """Several commands (each a sequence of arguments: bytes-like, str as UTF-8, int) as
    the pieces to send in order: the RESP around the arguments, and each bytes-like argument
    of ``large`` bytes or more as itself (sent from where it is: a flush's frames are not
    copied once more). The pieces are sized in one pass first, so nothing is reallocated.
    Anything else (a float: its spelling is the caller's; a bool) raises ``TypeError``."""
    cdef Out o
    cdef Py_ssize_t n, bound = 0
    cdef const char* p
    cdef char digits[24]
    cdef list pieces = []
    cdef list prepared = []
    for args in commands:
        items = args if type(args) is list else list(args)
        prepared.append(items)
        bound += 24
        for arg in items:
            _arg_bytes(arg, &n, digits)
            bound += 24 if _by_reference(arg, n, large) else n + 24
    out_init(&o, bound)
    try:
        for items in prepared:
            out_need(&o, 24)
            _put_header(&o, b'*', len(<list>items))
            for arg in <list>items:
                p = _arg_bytes(arg, &n, digits)
                out_need(&o, n + 32)
                _put_header(&o, b'$', n)
                if _by_reference(arg, n, large):
                    bound -= o.n
                    pieces.append(out_finish(&o))
                    pieces.append(arg)
                    out_init(&o, bound)
                else:
                    out_put(&o, p, n)
                o.buf[o.n] = b'\r'
                o.buf[o.n + 1] = b'\n'
                o.n += 2
    except BaseException:
        out_free(&o)
        raise
    pieces.append(out_finish(&o))
    return pieces


def pack_commands(commands):
    """Several commands as one pipeline's bytes (``pack_pipeline`` joined)."""
    pieces = pack_pipeline(commands, MAX_BULK_BYTES + 1)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def pack_command(args):
    """One command as RESP (an array of bulk strings)."""
    return pack_commands((args,))


cdef class RespReader:
    """Feed it bytes as they arrive (``feed``), take complete replies (``next_reply``).

    Resumable: a large reply arriving in many pieces is parsed once (the arrays already
    read and the position are kept between pieces), never from its start again.
    """

    cdef char* _buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _pos
    # The arrays being filled, outermost first: their items so far and their sizes.
    cdef list _items
    cdef Py_ssize_t _sizes[DEPTH]
    cdef int _depth

    def __cinit__(self):
        self._buf = NULL
        self._len = self._cap = self._pos = 0
        self._items = []
        self._depth = 0

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def buffered(self):
        """Bytes received and not yet parsed into part of a reply."""
        return self._len - self._pos

    @property
    def capacity(self):
        """Bytes of buffer the reader holds (what a large reply grew it to, until the next
        feed after it was parsed)."""
        return self._cap

    def feed(self, const unsigned char[::1] data not None):
        cdef Py_ssize_t n = data.shape[0]
        cdef Py_ssize_t want
        cdef char* grown
        if n == 0:
            return
        if self._pos == self._len and self._cap > KEEP_BUFFER:
            # All parsed: a buffer grown by one large reply is not kept for the next.
            PyMem_Free(self._buf)
            self._buf = NULL
            self._len = self._cap = self._pos = 0
        if self._pos and (self._pos >= COMPACT_AFTER or self._pos == self._len):
            memmove(self._buf, self._buf + self._pos, self._len - self._pos)
            self._len -= self._pos
            self._pos = 0
        if self._len + n > self._cap:
            want = max(self._cap * 2, self._len + n, 65536)
            grown = <char*>PyMem_Realloc(self._buf, want)
            if grown == NULL:
                raise MemoryError()
            self._buf = grown
            self._cap = want
        memcpy(self._buf + self._len, &data[0], n)
        self._len += n

    def next_reply(self):
        """The next complete reply, or ``NEED_DATA``."""
        cdef const char* base
        cdef const char* line
        cdef const char* end
        cdef Py_ssize_t pos, avail, start, size, lim
        cdef long long number
        cdef char kind
        while True:
            pos = self._pos
            base = self._buf
            avail = self._len - pos
            if avail <= 0:
                return NEED_DATA
            lim = avail if avail < MAX_LINE_BYTES else MAX_LINE_BYTES
            line = base + pos
            end = <const char*>memchr(line, b'\n', lim)
            if end == NULL:
                if avail > MAX_LINE_BYTES:
                    raise RespProtocolError("a reply line without an end")
                return NEED_DATA
            if end == line or (end - 1)[0] != b'\r':
                raise RespProtocolError("a reply line not ended by CRLF")
            kind = line[0]
            start = (end - base) + 1  # past the LF
            if kind == b'$':
                size = _number(line + 1, end - 1, MAX_BULK_BYTES)
                if size < 0:
                    value = None
                    self._pos = start
                else:
                    if self._len < start + size + 2:
                        return NEED_DATA
                    if base[start + size] != b'\r' or base[start + size + 1] != b'\n':
                        raise RespProtocolError("a bulk string longer than it said")
                    value = PyBytes_FromStringAndSize(base + start, size)
                    self._pos = start + size + 2
            elif kind == b'*':
                size = _number(line + 1, end - 1, MAX_ARRAY_ITEMS)
                self._pos = start
                if size > 0:
                    if self._depth >= DEPTH:
                        raise RespProtocolError("arrays nested too deep")
                    self._items.append([])
                    self._sizes[self._depth] = size
                    self._depth += 1
                    continue
                value = None if size < 0 else []
            elif kind == b'+':
                value = PyBytes_FromStringAndSize(line + 1, end - 1 - (line + 1))
                self._pos = start
            elif kind == b'-':
                value = RespError(
                    (line + 1)[: end - 1 - (line + 1)].decode("utf-8", "replace")
                )
                self._pos = start
            elif kind == b':':
                number = _integer(line + 1, end - 1)
                value = number
                self._pos = start
            else:
                raise RespProtocolError(f"not a RESP2 reply: {(line)[:min(avail, 40)]!r}")
            # Place the value in the array it belongs to, closing every array it completes.
            while self._depth:
                items = <list>self._items[self._depth - 1]
                items.append(value)
                if len(items) < self._sizes[self._depth - 1]:
                    break
                self._items.pop()
                self._depth -= 1
                value = items
            else:
                return value


cdef long long _integer(const char* p, const char* end) except? -1:
    """A RESP integer (64-bit signed) between ``p`` and ``end`` (exclusive)."""
    cdef bint negative = False
    cdef unsigned long long v = 0
    cdef unsigned long long limit = 9223372036854775807ULL
    cdef const char* q = p
    if q < end and q[0] == b'-':
        negative = True
        limit += 1
        q += 1
    if q == end or end - q > 19:
        raise RespProtocolError(f"not an integer: {p[: end - p]!r}")
    while q < end:
        if q[0] < b'0' or q[0] > b'9':
            raise RespProtocolError(f"not an integer: {p[: end - p]!r}")
        v = v * 10 + <unsigned long long>(q[0] - 48)  # 19 digits cannot wrap 64 bits
        q += 1
    if v > limit:
        raise RespProtocolError(f"an integer out of range: {p[: end - p]!r}")
    if negative:
        return <long long>(0 - v)
    return <long long>v


cdef Py_ssize_t _number(const char* p, const char* end, Py_ssize_t bound) except -2:
    """A length: -1 (null) to ``bound``."""
    cdef long long v = _integer(p, end)
    if v < -1 or v > bound:
        raise RespProtocolError(f"a length out of bounds: {v}")
    return <Py_ssize_t>v
