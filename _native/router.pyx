"""Token -> channel routing in C: one ``dispatch`` call routes a whole batch.

``TokenTable`` is an open-addressing hash table (linear probing, backward-shift deletion)
keyed by the token's bytes, so the hot path looks a token up straight from the frame
buffer without building a Python object per message.

The firehose (Logplex's ``FIREHOSE_*``): a token added with ``firehose=True`` has each of
its frames also appended raw (APP-NAME as sent) to one ring of a ``Firehose``, taken in
turn, by the same ``dispatch`` call; a frame of any other token costs one flag test.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy, memset

from logplexd._native.batch cimport Batch
from logplexd._native.records cimport F_APPNAME, REC_HAS_APP, MsgRec
from logplexd._native.ring cimport ChannelRing

DEF MAX_TOKEN = 64
DEF MAX_NAME = 255
# How many frames ahead dispatch prefetches the slot and arena line a frame will be written
# to: with 1,000 channels taken in turn every append lands in cold memory.
DEF PREFETCH_AHEAD = 4
# And how many ahead it asks for the ring object itself, whose fields those addresses come
# from (asked for in the look-up pass, all of a batch's were out of the cache again by the
# time their appends came).
DEF RING_AHEAD = 12

cdef extern from *:
    void __builtin_prefetch(const void* addr, int rw, int locality) nogil

ctypedef struct Entry:
    uint64_t hash            # 0 = empty slot
    PyObject* ring           # these two are strong references
    PyObject* name           # bytes
    const unsigned char* name_data   # name's bytes and length, read without touching the
    Py_ssize_t name_len              # object's header (no refcount writes per frame)
    int firehose             # 1: frames are also re-posted raw to the firehose
    int key_len
    # The token's bytes in the entry itself: compared for every routed frame, a bytes
    # object elsewhere in memory was a cache miss per frame with 1,000 tokens.
    unsigned char key[MAX_TOKEN]


cdef inline uint64_t _hash(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # FNV-1a over 8-byte words, then a final mix: a token is ~36 bytes, and a chain of 36
    # dependent multiplies per routed frame was measurable (5 steps now).
    cdef uint64_t h = 1469598103934665603ULL ^ <uint64_t>n
    cdef uint64_t w
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        h = (h ^ w) * 1099511628211ULL
        h ^= h >> 29
        i += 8
    if i < n:
        if n >= 8:
            # The last 8 bytes in one load, shifted down to the ones not hashed yet: a
            # variable-length copy into ``w`` was a call and a stalled load (bytes stored
            # one by one, read back as a word) on every routed frame, 15 % of dispatch.
            # Same value as the copy on a little-endian machine; the table only has to
            # agree with itself.
            memcpy(&w, p + n - 8, 8)
            w >>= 8 * (8 - (n - i))
        else:
            w = 0
            memcpy(&w, p + i, n - i)
        h = (h ^ w) * 1099511628211ULL
    h ^= h >> 32
    h *= 0x9E3779B97F4A7C15ULL
    h ^= h >> 29
    return h | 1   # never 0: 0 marks an empty slot


cdef unsigned long long _dispatch_epoch = 0


cdef class Firehose:
    """The rings that frames of firehose tokens are re-posted to, one per frame in turn
    (round robin: over any run of frames the rings' counts differ by at most one), with
    how many each was given."""
    cdef list _rings
    cdef Py_ssize_t n
    cdef Py_ssize_t next
    cdef unsigned long long* counts
    cdef readonly unsigned long long total

    def __cinit__(self, rings=()):
        cdef Py_ssize_t i
        self._rings = list(rings)
        for ring in self._rings:
            if not isinstance(ring, ChannelRing):
                raise TypeError("Firehose takes ChannelRings")
        self.n = len(self._rings)
        self.next = 0
        self.total = 0
        self.counts = <unsigned long long*>PyMem_Malloc(max(self.n, 1) * sizeof(unsigned long long))
        if self.counts == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.counts[i] = 0

    def __dealloc__(self):
        PyMem_Free(self.counts)

    @property
    def rings(self):
        return tuple(self._rings)

    def posted(self):
        """Frames re-posted to each ring so far, in the order of ``rings``."""
        return [self.counts[i] for i in range(self.n)]

    def __len__(self):
        return self.n

    cdef inline object post(self, const unsigned char* base, const MsgRec* rec,
                            ChannelRing own):
        """Append ``rec`` as it came to the next ring in turn, unless that is ``own`` (a
        firehose is never fed its own messages); the ring it went to, or None."""
        cdef Py_ssize_t i = self.next
        cdef ChannelRing ring = <ChannelRing>self._rings[i]
        self.next = i + 1 if i + 1 < self.n else 0
        if ring is own:
            return None
        ring.append_rec(base, rec, NULL, -1)
        self.counts[i] += 1
        self.total += 1
        return ring


cdef class TokenTable:
    cdef Entry* entries
    cdef Py_ssize_t cap        # power of two
    cdef Py_ssize_t count

    def __cinit__(self):
        self.cap = 0
        self.count = 0
        self.entries = NULL
        self._resize(64)

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.entries != NULL:
            for i in range(self.cap):
                if self.entries[i].hash:
                    Py_DECREF(<object>self.entries[i].ring)
                    Py_DECREF(<object>self.entries[i].name)
            PyMem_Free(self.entries)

    cdef int _resize(self, Py_ssize_t new_cap) except -1:
        cdef Entry* old = self.entries
        cdef Py_ssize_t old_cap = self.cap, i, j
        cdef Entry* fresh = <Entry*>PyMem_Malloc(new_cap * sizeof(Entry))
        if fresh == NULL:
            raise MemoryError()
        memset(fresh, 0, new_cap * sizeof(Entry))
        for i in range(old_cap):
            if old[i].hash:
                j = <Py_ssize_t>(old[i].hash & (new_cap - 1))
                while fresh[j].hash:
                    j = (j + 1) & (new_cap - 1)
                fresh[j] = old[i]
        PyMem_Free(old)
        self.entries = fresh
        self.cap = new_cap
        return 0

    cdef inline Entry* find(self, const unsigned char* key, Py_ssize_t n) noexcept:
        if n <= 0 or n > MAX_TOKEN:
            return NULL
        return self.find_hashed(key, n, _hash(key, n))

    cdef inline void prefetch(self, uint64_t h) noexcept:
        """Ask for the slot a look-up of hash ``h`` reads first (and the rest of its key)."""
        cdef Entry* e = &self.entries[<Py_ssize_t>(h & (self.cap - 1))]
        __builtin_prefetch(e, 0, 3)
        __builtin_prefetch(<const char*>e + 64, 0, 3)

    cdef inline Entry* find_hashed(self, const unsigned char* key, Py_ssize_t n,
                                   uint64_t h) noexcept:
        """``find`` with the key's ``_hash`` already known (``n`` in 1..MAX_TOKEN)."""
        cdef Py_ssize_t j = <Py_ssize_t>(h & (self.cap - 1))
        while self.entries[j].hash:
            if (self.entries[j].hash == h
                    and self.entries[j].key_len == n
                    and memcmp(self.entries[j].key, key, n) == 0):
                return &self.entries[j]
            j = (j + 1) & (self.cap - 1)
        return NULL

    def add(self, bytes token not None, ChannelRing ring not None, bytes name not None,
            bint firehose=False):
        """Map ``token`` to ``ring``; frames routed by it get APP-NAME ``name``; with
        ``firehose`` they are also re-posted raw to the ``Firehose`` given to dispatch."""
        cdef Py_ssize_t n = len(token), j
        cdef Entry* e
        cdef uint64_t h
        if n == 0 or n > MAX_TOKEN:
            raise ValueError(f"token must be 1..{MAX_TOKEN} bytes")
        if len(name) > MAX_NAME:
            raise ValueError(f"token name must be at most {MAX_NAME} bytes")
        e = self.find(token, n)
        if e != NULL:
            Py_INCREF(ring)
            Py_INCREF(name)
            Py_DECREF(<object>e.ring)
            Py_DECREF(<object>e.name)
            e.ring = <PyObject*>ring
            e.name = <PyObject*>name
            e.name_data = <const unsigned char*>PyBytes_AS_STRING(name)
            e.name_len = len(name)
            e.firehose = firehose
            return
        if (self.count + 1) * 2 > self.cap:
            self._resize(self.cap * 2)
        h = _hash(token, n)
        j = <Py_ssize_t>(h & (self.cap - 1))
        while self.entries[j].hash:
            j = (j + 1) & (self.cap - 1)
        e = &self.entries[j]
        e.hash = h
        e.key_len = <int>n
        memcpy(e.key, PyBytes_AS_STRING(token), n)
        Py_INCREF(ring)
        Py_INCREF(name)
        e.ring = <PyObject*>ring
        e.name = <PyObject*>name
        e.name_data = <const unsigned char*>PyBytes_AS_STRING(name)
        e.name_len = len(name)
        e.firehose = firehose
        self.count += 1

    def remove(self, bytes token not None):
        cdef Entry* e = self.find(token, len(token))
        cdef Py_ssize_t i, j, home, mask = self.cap - 1
        if e == NULL:
            return False
        Py_DECREF(<object>e.ring)
        Py_DECREF(<object>e.name)
        i = e - self.entries
        self.entries[i].hash = 0
        # Backward-shift: pull later members of the probe run into the hole.
        j = i
        while True:
            j = (j + 1) & mask
            if not self.entries[j].hash:
                break
            home = <Py_ssize_t>(self.entries[j].hash & mask)
            if ((j - home) & mask) >= ((j - i) & mask):
                self.entries[i] = self.entries[j]
                self.entries[j].hash = 0
                i = j
        self.count -= 1
        return True

    def lookup(self, bytes token not None):
        cdef Entry* e = self.find(token, len(token))
        if e == NULL:
            return None
        return (<object>e.ring, <object>e.name)

    def firehosed(self, bytes token not None):
        """Whether ``token``'s frames are re-posted to the firehose (False: unknown)."""
        cdef Entry* e = self.find(token, len(token))
        return e != NULL and e.firehose != 0

    def __len__(self):
        return self.count


def dispatch(Batch batch not None, TokenTable table not None, Firehose firehose=None,
             Py_ssize_t start=0):
    """Route each frame from ``start`` on by the token in its APP-NAME: (routed, unknown,
    rings to wake).

    APP-NAME is replaced by the token's name in what the ring stores. A frame of a firehose
    token is also appended as it came to the next ring of ``firehose`` (never to its own
    ring). The last item lists once, in first-touch order, each ring that received
    messages (firehose rings included) and whose head reached its ``wake_at``, for waking
    its readers.
    """
    routed, unknown, wake, _stop = _dispatch(batch, table, firehose, start, False)
    return routed, unknown, wake


def dispatch_until_held(Batch batch not None, TokenTable table not None,
                        Firehose firehose=None, Py_ssize_t start=0):
    """``dispatch``, stopping before the first frame whose ring's head has reached its
    ``hold_at``: (routed, unknown, rings to wake, stop). ``stop`` is the index of the first
    frame not routed (-1: all were); the ring it stopped at is among the rings to wake.
    The caller learns from the ring's owner whether it is held, and routes the rest from
    ``stop`` once it is not (issue 18: an input stops at the message that reaches a
    consumer's mark, not a whole read later)."""
    return _dispatch(batch, table, firehose, start, True)


cdef Entry** _found = NULL      # dispatch's scratch: the entry of each frame of a batch
cdef uint64_t* _hashes = NULL   # and the hash of its token (0: it has none to look up)
cdef Py_ssize_t _found_cap = 0


cdef int _reserve_found(Py_ssize_t n) except -1:
    global _found, _hashes, _found_cap
    cdef Entry** fresh
    cdef uint64_t* hashes
    if n <= _found_cap:
        return 0
    fresh = <Entry**>PyMem_Malloc(n * sizeof(Entry*))
    hashes = <uint64_t*>PyMem_Malloc(n * sizeof(uint64_t))
    if fresh == NULL or hashes == NULL:
        PyMem_Free(fresh)
        PyMem_Free(hashes)
        raise MemoryError()
    PyMem_Free(_found)
    PyMem_Free(_hashes)
    _found = fresh
    _hashes = hashes
    _found_cap = n
    return 0


cdef inline bint _due(ChannelRing ring) noexcept:
    """Whether dispatch lists ``ring`` for its owner: its head reached ``wake_at`` (a
    waiter's mark) or ``hold_at`` (a consumer's hold mark)."""
    return ring.head >= ring.wake_at or ring.head >= ring.hold_at


cdef inline void _prefetch_ring(Entry* e) noexcept:
    """Ask for the ring object ``e`` routes to (its fields span three cache lines)."""
    if e != NULL:
        __builtin_prefetch(e.ring, 1, 3)
        __builtin_prefetch(<const char*>e.ring + 64, 1, 3)
        __builtin_prefetch(<const char*>e.ring + 128, 1, 3)


cdef inline void _prefetch_append(Entry* e) noexcept:
    """Ask for the record slot and arena bytes the next append to ``e``'s ring writes."""
    cdef ChannelRing ring
    if e == NULL:
        return
    ring = <ChannelRing>e.ring
    if ring.slot_cap:
        __builtin_prefetch(&ring.slots[ring.head & ring.slot_mask], 1, 3)
    if ring.arena != NULL:
        __builtin_prefetch(ring.arena + ring.wpos, 1, 3)
        __builtin_prefetch(ring.arena + ring.wpos + 64, 1, 3)


cdef tuple _dispatch(Batch batch, TokenTable table, Firehose firehose, Py_ssize_t start,
                     bint until_held):
    global _dispatch_epoch
    cdef Py_ssize_t i, k, n, routed = 0, unknown = 0, stop = -1
    cdef MsgRec* rec
    cdef Entry* e
    cdef uint64_t h
    cdef ChannelRing ring, copy
    cdef list wake = []
    cdef bint tap = firehose is not None and firehose.n > 0
    if start < 0 or start > batch.n:
        raise ValueError("start out of range")
    _dispatch_epoch += 1
    n = batch.n - start
    _reserve_found(n)
    # First every frame's entry, in two passes: the tokens' hashes (asking for each one's
    # table slot), then the look-ups (asking for the ring object each one appends to: its
    # fields span three cache lines). Independent misses overlap instead of each waiting
    # for the last; the appends below then know several frames ahead where they write.
    for k in range(n):
        rec = &batch.recs[start + k]
        if rec.flags & REC_HAS_APP and 0 < rec.fl[F_APPNAME] <= MAX_TOKEN:
            h = _hash(batch.buf + rec.off + rec.fs[F_APPNAME], rec.fl[F_APPNAME])
            table.prefetch(h)
            _hashes[k] = h
        else:
            _hashes[k] = 0
    for k in range(n):
        h = _hashes[k]
        if h:
            rec = &batch.recs[start + k]
            e = table.find_hashed(batch.buf + rec.off + rec.fs[F_APPNAME], rec.fl[F_APPNAME], h)
            _found[k] = e
        else:
            _found[k] = NULL
    for k in range(min(RING_AHEAD, n)):
        _prefetch_ring(_found[k])
    for k in range(min(PREFETCH_AHEAD, n)):
        _prefetch_append(_found[k])
    for k in range(n):
        if k + RING_AHEAD < n:
            _prefetch_ring(_found[k + RING_AHEAD])
        if k + PREFETCH_AHEAD < n:
            _prefetch_append(_found[k + PREFETCH_AHEAD])
        e = _found[k]
        i = start + k
        if e == NULL:
            unknown += 1
            continue
        rec = &batch.recs[i]
        ring = <ChannelRing>e.ring
        if until_held and ring.head >= ring.hold_at:
            stop = i
            if ring.epoch != _dispatch_epoch:
                ring.epoch = _dispatch_epoch
                wake.append(ring)
            break
        ring.append_rec(batch.buf, rec, e.name_data, e.name_len)
        # Listed once, as soon as it is due (a head only grows here, so a ring due after
        # one append is due at the end): with 1,000 channels taken in turn, listing every
        # touched ring and filtering it afterwards was a list append, a reference and a
        # second visit per message for rings nobody waits on.
        if ring.epoch != _dispatch_epoch and _due(ring):
            ring.epoch = _dispatch_epoch
            wake.append(ring)
        routed += 1
        if e.firehose and tap:
            copy = firehose.post(batch.buf, rec, ring)
            if copy is not None and copy.epoch != _dispatch_epoch and _due(copy):
                copy.epoch = _dispatch_epoch
                wake.append(copy)
    return routed, unknown, wake, stop


def dispatch_to(Batch batch not None, TokenTable table not None, ChannelRing ring not None,
                Firehose firehose=None, bint firehosed=False, Py_ssize_t start=0):
    """Token auth: every frame from ``start`` on goes to ``ring``; how many.

    A frame whose APP-NAME is a token of that same channel shows that token's name; any
    other APP-NAME is kept as sent. With ``firehose``, a frame is also appended as it came
    to the firehose's next ring when the token it is counted under is a firehose token: the
    sibling token its APP-NAME names, else the token that authenticated (``firehosed``).
    The caller wakes the firehose rings (``firehose.total`` tells whether any got one).
    """
    return _dispatch_to(batch, table, ring, firehose, firehosed, start, False)[0]


def dispatch_to_until_held(Batch batch not None, TokenTable table not None,
                           ChannelRing ring not None, Firehose firehose=None,
                           bint firehosed=False, Py_ssize_t start=0):
    """``dispatch_to``, stopping before the first frame once ``ring``'s head has reached
    its ``hold_at``: (routed, stop), ``stop`` the index of the first frame not routed (-1:
    all were). A token-authenticated body then stops at the message that reaches a
    consumer's mark, as a syslog read does (``dispatch_until_held``)."""
    return _dispatch_to(batch, table, ring, firehose, firehosed, start, True)


cdef tuple _dispatch_to(Batch batch, TokenTable table, ChannelRing ring, Firehose firehose,
                        bint firehosed, Py_ssize_t start, bint until_held):
    cdef Py_ssize_t i, stop = -1
    cdef MsgRec* rec
    cdef Entry* e
    cdef bint tap = firehose is not None and firehose.n > 0
    cdef bint tapped
    if start < 0 or start > batch.n:
        raise ValueError("start out of range")
    for i in range(start, batch.n):
        if until_held and ring.head >= ring.hold_at:
            stop = i
            break
        rec = &batch.recs[i]
        e = NULL
        if rec.flags & REC_HAS_APP:
            e = table.find(batch.buf + rec.off + rec.fs[F_APPNAME], rec.fl[F_APPNAME])
        if e != NULL and e.ring == <PyObject*>ring:
            ring.append_rec(batch.buf, rec, e.name_data, e.name_len)
            tapped = e.firehose != 0
        else:
            ring.append_rec(batch.buf, rec, NULL, -1)
            tapped = firehosed
        if tapped and tap:
            firehose.post(batch.buf, rec, ring)
    return (batch.n if stop < 0 else stop) - start, stop
