from logplexd._native.records cimport MsgRec


cdef class Batch:
    # One owned byte buffer holding every payload back to back, and one record per frame.
    cdef unsigned char* buf
    cdef readonly Py_ssize_t nbytes
    cdef Py_ssize_t buf_cap
    cdef MsgRec* recs
    cdef Py_ssize_t n
    cdef Py_ssize_t rec_cap
    cdef public Py_ssize_t malformed

    # nogil: framing runs without the GIL (in the syslog input's worker threads). The
    # storage comes from PyMem_Raw*, which needs no GIL either.
    cdef int reserve(self, Py_ssize_t more_bytes, Py_ssize_t more_recs) except -1 nogil
    cdef MsgRec* push(self, const unsigned char* data, Py_ssize_t length) except NULL nogil
    cdef MsgRec* push_rec(self, const unsigned char* base, const MsgRec* src) except NULL nogil
