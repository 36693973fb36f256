# cython: freethreading_compatible = False
"""Batch: the unit every native call takes and returns (one buffer + an array of records)."""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_RawFree, PyMem_RawRealloc
from libc.string cimport memcpy, memset

from logplexd._native.records cimport (
    F_APPNAME, F_HOSTNAME, F_MSG, F_MSGID, F_PROCID, F_SD, F_TIMESTAMP, NFIELDS,
    REC_HAS_APP, REC_VALID, MsgRec,
)

_FIELD_NAMES = (
    ("timestamp", F_TIMESTAMP), ("hostname", F_HOSTNAME), ("app", F_APPNAME),
    ("procid", F_PROCID), ("msgid", F_MSGID), ("sd", F_SD), ("msg", F_MSG),
)


cdef class Batch:
    def __cinit__(self):
        self.buf = NULL
        self.recs = NULL
        self.nbytes = 0
        self.buf_cap = 0
        self.n = 0
        self.rec_cap = 0
        self.malformed = 0

    def __dealloc__(self):
        PyMem_RawFree(self.buf)
        PyMem_RawFree(self.recs)

    cdef int reserve(self, Py_ssize_t more_bytes, Py_ssize_t more_recs) except -1 nogil:
        cdef Py_ssize_t want
        cdef void* p
        # Allocate on first use even for 0 bytes: memcpy/offsets on a NULL buf are UB (UBSan).
        if self.buf == NULL or self.nbytes + more_bytes > self.buf_cap:
            want = max(self.buf_cap * 2, self.nbytes + more_bytes, 256)
            p = PyMem_RawRealloc(self.buf, want)
            if p == NULL:
                with gil:
                    raise MemoryError()
            self.buf = <unsigned char*>p
            self.buf_cap = want
        if self.n + more_recs > self.rec_cap:
            want = max(self.rec_cap * 2, self.n + more_recs, 16)
            p = PyMem_RawRealloc(self.recs, want * sizeof(MsgRec))
            if p == NULL:
                with gil:
                    raise MemoryError()
            self.recs = <MsgRec*>p
            self.rec_cap = want
        return 0

    cdef MsgRec* push(self, const unsigned char* data, Py_ssize_t length) except NULL nogil:
        """Copy one payload in; the caller fills the record's fields."""
        cdef MsgRec* rec
        self.reserve(length, 1)
        memcpy(self.buf + self.nbytes, data, length)
        rec = &self.recs[self.n]
        memset(rec, 0, sizeof(MsgRec))
        rec.off = <unsigned int>self.nbytes
        rec.len = <unsigned short>length
        rec.pri = -1
        self.nbytes += length
        self.n += 1
        return rec

    cdef MsgRec* push_rec(self, const unsigned char* base, const MsgRec* src) except NULL nogil:
        """Copy a parsed record (payload and fields) from another buffer."""
        cdef MsgRec* rec
        cdef unsigned int off
        self.reserve(src.len, 1)
        off = <unsigned int>self.nbytes
        memcpy(self.buf + off, base + src.off, src.len)
        rec = &self.recs[self.n]
        rec[0] = src[0]
        rec.off = off
        self.nbytes += src.len
        self.n += 1
        return rec

    def __len__(self):
        return self.n

    def _check(self, Py_ssize_t i):
        if i < 0:
            i += self.n
        if i < 0 or i >= self.n:
            raise IndexError("frame index out of range")
        return i

    def frame(self, Py_ssize_t i):
        i = self._check(i)
        return PyBytes_FromStringAndSize(<char*>self.buf + self.recs[i].off, self.recs[i].len)

    def frames(self):
        return [self.frame(i) for i in range(self.n)]

    def fields(self, Py_ssize_t i):
        """All fields of frame ``i`` as a dict (tests and debugging; not the hot path)."""
        cdef MsgRec* rec
        cdef const unsigned char* p
        cdef int f
        i = self._check(i)
        rec = &self.recs[i]
        p = self.buf + rec.off
        valid = bool(rec.flags & REC_VALID)
        out = {"pri": rec.pri, "valid": valid, "has_app": bool(rec.flags & REC_HAS_APP)}
        for name, f in _FIELD_NAMES:
            if valid or (f == F_APPNAME and rec.flags & REC_HAS_APP):
                out[name] = PyBytes_FromStringAndSize(<char*>p + rec.fs[f], rec.fl[f])
            else:
                out[name] = None
        return out

    def __repr__(self):
        return f"<Batch frames={self.n} bytes={self.nbytes} malformed={self.malformed}>"
