"""Frames as they travel between nodes (issue 11): a batch as octet-counted bytes.

``octet_frames`` writes every frame of a batch, unchanged and whether valid or not, as
RFC 6587 ``LEN SP payload``: ``parse_body`` reads that back into an equal batch (fields are
located again from the payload). One call per batch, one output buffer: the per-channel
history stream in Redis stores a routed batch as one such blob.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcpy

from logplexd._native.batch cimport Batch
from logplexd._native.records cimport MsgRec


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


def octet_frames(Batch batch not None, Py_ssize_t start=0, Py_ssize_t end=-1):
    """Frames ``start`` to ``end`` (default: all) of ``batch`` as ``LEN SP payload`` bytes."""
    cdef Py_ssize_t i, total = 0, pos = 0
    cdef MsgRec* rec
    cdef char* out
    if end < 0 or end > batch.n:
        end = batch.n
    if start < 0:
        start = 0
    for i in range(start, end):
        total += batch.recs[i].len + 7   # at most 5 digits (len <= 65535) + SP, and a margin
    if total == 0:
        return b""
    out = <char*>PyMem_Malloc(total)
    if out == NULL:
        raise MemoryError()
    try:
        for i in range(start, end):
            rec = &batch.recs[i]
            if rec.len == 0:
                continue   # LEN never starts with 0: an empty frame cannot be written
            pos += _put_len(out + pos, rec.len)
            memcpy(out + pos, batch.buf + rec.off, rec.len)
            pos += rec.len
        return PyBytes_FromStringAndSize(out, pos)
    finally:
        PyMem_Free(out)
