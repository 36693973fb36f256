"""Frames as they travel between nodes (issue 11): a batch as octet-counted bytes.

``octet_frames`` writes every frame of a batch, unchanged and whether valid or not, as
RFC 6587 ``LEN SP payload``: ``parse_body`` reads that back into an equal batch (fields are
located again from the payload). One call per batch, one output buffer: the per-channel
history stream in Redis stores a routed batch as one such blob, and a drain's disk backlog
stores its messages so (``octet_frames_from_ring``, read where they lie in the ring).
"""

from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdint cimport uint64_t

from logplexd._native.batch cimport Batch
from logplexd._native.out cimport Out, out_finish, out_init, out_put
from logplexd._native.records cimport MsgRec
from logplexd._native.ring cimport ChannelRing


cdef inline Py_ssize_t _put_len(char* out, Py_ssize_t value) noexcept:
    """Write ``value`` in decimal followed by SP; returns the bytes written."""
    cdef char tmp[24]
    cdef Py_ssize_t k = 0, i
    if value == 0:
        tmp[0] = 48
        k = 1
    while value > 0:
        tmp[k] = <char>(48 + value % 10)
        value //= 10
        k += 1
    for i in range(k):
        out[i] = tmp[k - 1 - i]
    out[k] = 32
    return k + 1


cdef inline void _put_frames(Out* o, Batch batch, Py_ssize_t start,
                             Py_ssize_t stop) noexcept:
    """Frames ``start`` to ``stop`` of ``batch`` as ``LEN SP payload`` into ``o`` (sized
    for them by the caller)."""
    cdef Py_ssize_t i
    cdef MsgRec* rec
    for i in range(start, stop):
        rec = &batch.recs[i]
        if rec.len == 0:
            continue   # LEN never starts with 0: an empty frame cannot be written
        o.n += _put_len(o.buf + o.n, rec.len)
        out_put(o, batch.buf + rec.off, rec.len)


cdef object _octet_frames(Batch batch, Py_ssize_t start, Py_ssize_t end,
                          Py_ssize_t max_bytes, Py_ssize_t* taken, Py_ssize_t* payload):
    """Frames ``start`` to ``end`` (-1: the last) of ``batch`` as ``LEN SP payload`` bytes,
    ending after the frame whose payload bytes reach ``max_bytes`` (at least one frame);
    the frames taken and their payload bytes in ``taken`` and ``payload``."""
    cdef Py_ssize_t stop
    cdef Out o
    if end < 0 or end > batch.n:
        end = batch.n
    if start < 0:
        start = 0
    stop = start
    payload[0] = 0
    while stop < end and (stop == start or payload[0] < max_bytes):
        payload[0] += batch.recs[stop].len
        stop += 1
    taken[0] = max(0, stop - start)
    if payload[0] == 0:
        return b""
    # Written straight into the bytes object returned (a Redis-mode node encodes every
    # message it routes here once): no buffer of our own to copy from.
    out_init(&o, payload[0] + 7 * (stop - start))   # at most 5 digits + SP a frame
    _put_frames(&o, batch, start, stop)
    return out_finish(&o)


def octet_frames(Batch batch not None, Py_ssize_t start=0, Py_ssize_t end=-1):
    """Frames ``start`` to ``end`` (default: all) of ``batch`` as ``LEN SP payload`` bytes."""
    cdef Py_ssize_t taken, payload
    return _octet_frames(batch, start, end, PY_SSIZE_T_MAX, &taken, &payload)


def octet_frames_upto(Batch batch not None, Py_ssize_t start, Py_ssize_t end,
                      Py_ssize_t max_bytes):
    """``octet_frames(batch, start, end)``, but ending after the frame whose payload bytes
    reach ``max_bytes`` (at least one frame): (bytes, frames taken, their payload bytes)."""
    cdef Py_ssize_t taken, payload
    frames = _octet_frames(batch, start, end, max_bytes, &taken, &payload)
    return frames, taken, payload


def octet_frames_from_ring(ChannelRing ring not None, unsigned long long cursor,
                           Py_ssize_t max_messages, Py_ssize_t max_bytes):
    """``octet_frames(ring.read(cursor, max_messages, max_bytes)[0])`` without the batch:
    (bytes, count, next_cursor, lost), the messages taken and ``lost`` exactly as
    ``ChannelRing.read`` takes and counts them (at least one message when any is there,
    whatever ``max_bytes``). A drain spilling its backlog to disk copies each message once
    instead of twice."""
    cdef uint64_t s = cursor, end, first
    cdef unsigned long long lost = 0
    cdef const MsgRec* rec
    cdef Py_ssize_t nbytes = 0
    cdef Out o
    s = ring.read_start(s, &lost)
    end = ring.read_end(s, max_messages, max_bytes, &nbytes)
    if nbytes == 0:
        return b"", <Py_ssize_t>(end - s), end, lost
    out_init(&o, nbytes + 7 * <Py_ssize_t>(end - s))   # at most 5 digits + SP a frame
    first = s
    while s < end:
        rec = &ring.slots[s & ring.slot_mask]
        s += 1
        if rec.len == 0:
            continue   # LEN never starts with 0: an empty frame cannot be written
        o.n += _put_len(o.buf + o.n, rec.len)
        out_put(&o, ring.arena + rec.off, rec.len)
    return out_finish(&o), <Py_ssize_t>(end - first), end, lost
