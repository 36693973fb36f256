# A bytes object written in place: what the encoders (encode.pyx) and the Redis commands
# (resp.pyx) build. The output goes straight into the bytes object that is returned, resized
# on demand and to its length at the end: no buffer of our own to copy from.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF, PyObject
from libc.string cimport memcpy


cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject** bytes, Py_ssize_t newsize) except -1


cdef struct Out:
    PyObject* obj
    char* buf
    Py_ssize_t n
    Py_ssize_t cap


cdef inline int out_init(Out* o, Py_ssize_t cap) except -1:
    cdef object fresh
    if cap < 64:
        cap = 64
    fresh = PyBytes_FromStringAndSize(NULL, cap)
    Py_INCREF(fresh)
    o.obj = <PyObject*>fresh
    o.buf = PyBytes_AS_STRING(fresh)
    o.n = 0
    o.cap = cap
    return 0


cdef inline int out_need(Out* o, Py_ssize_t more) except -1:
    """Room for ``more`` bytes past ``o.n`` (out_put writes without looking)."""
    cdef Py_ssize_t want
    if o.n + more <= o.cap:
        return 0
    want = max(o.cap * 2, o.n + more)
    _PyBytes_Resize(&o.obj, want)  # on failure o.obj is NULL and freed
    o.buf = PyBytes_AS_STRING(<object>o.obj)
    o.cap = want
    return 0


cdef inline void out_free(Out* o) noexcept:
    Py_XDECREF(o.obj)
    o.obj = NULL


cdef inline void out_put(Out* o, const void* src, Py_ssize_t n) noexcept:
    memcpy(o.buf + o.n, src, n)
    o.n += n


cdef inline void out_put_uint(Out* o, Py_ssize_t v) noexcept:
    cdef char tmp[24]
    cdef int k = 0
    if v == 0:
        o.buf[o.n] = b'0'
        o.n += 1
        return
    while v > 0:
        tmp[k] = <char>(48 + v % 10)
        v //= 10
        k += 1
    while k > 0:
        k -= 1
        o.buf[o.n] = tmp[k]
        o.n += 1


cdef inline Py_ssize_t out_ndigits(Py_ssize_t v) noexcept:
    cdef Py_ssize_t d = 1
    while v >= 10:
        v //= 10
        d += 1
    return d


cdef inline object out_finish(Out* o):
    """The bytes written (the Out is spent)."""
    cdef object result
    if o.n != o.cap:
        _PyBytes_Resize(&o.obj, o.n)
    result = <object>o.obj
    Py_DECREF(result)  # the reference out_init took is now the caller's
    o.obj = NULL
    return result
