"""ChannelRing: a channel's bounded history, written by the router, read through cursors.

Cursors are sequence numbers, so readers hold nothing inside the ring and never block the
writer: a reader that falls more than the capacity behind learns exactly how many messages
it lost (``tail - cursor``) on its next read. Storage grows on demand up to the limits, so
an idle channel costs a few hundred bytes: a young ring is on the heap, and one that
outgrows its first blocks reserves address space for all it may ever hold, which it then
grows into without copying (``ring_reserve``).
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

cdef extern from *:
    """
    #include <string.h>
    #include <sys/mman.h>

    /* Address space for all the storage a ring may ever use, its pages untouched (so not
       resident) until the ring writes to them: growing is then a larger bound, never a
       copy nor a system call. Copying rings as they grew (heap realloc, then mremap past
       64 KB) made routing into 1,000 filling channels 163-175 ns a message against
       154-157 now (bench/RESULTS.md, 2026-12-05 (third)). NULL when the kernel will not
       give it (strict overcommit, no address space left): the ring then grows on the heap. */
    static void *ring_reserve(size_t size) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }

    static void ring_release(void *p, size_t size) {
        if (p != NULL)
            munmap(p, size);
    }
    """
    void* ring_reserve(size_t size)
    void ring_release(void* p, size_t size)

from logplexd._native.batch cimport Batch
from logplexd._native.records cimport MsgRec

# A young ring's heap blocks. One whose slots or arena would grow past them moves both into
# its reservation: a channel that only ever holds a few messages costs two small heap
# blocks, not pages.
DEF FIRST_SLOTS = 8
DEF FIRST_ARENA = 2048
DEF PAGE = 4096


cdef inline size_t _pages(size_t n) noexcept:
    return (n + PAGE - 1) & ~(<size_t>PAGE - 1)


cdef inline Py_ssize_t _slot_limit(Py_ssize_t max_messages) noexcept:
    """The most slots a ring of ``max_messages`` has: the first power of two at or above it
    (doubling from FIRST_SLOTS, as ``_grow_slots`` does)."""
    cdef Py_ssize_t cap = FIRST_SLOTS
    while cap < max_messages:
        cap *= 2
    return cap

DEFAULT_MAX_MESSAGES = 1500
DEFAULT_MAX_BYTES = 4 * 1024 * 1024

# Whether new rings reserve the address space of their bounds (``reserve_address_space``).
cdef bint _reserving = True


def reserve_address_space(bint enabled):
    """Whether rings made from now on reserve their bounds' address space up front (the
    default), or grow on the heap. Under strict overcommit (``vm.overcommit_memory`` 2) a
    reservation counts its whole size against the commit limit, ``MAP_NORESERVE`` or not:
    1,000 channels' rings took it all, and the next allocation anywhere in the process
    failed."""
    global _reserving
    _reserving = enabled


cdef class ChannelRing:
    def __cinit__(self, Py_ssize_t max_messages=DEFAULT_MAX_MESSAGES,
                  Py_ssize_t max_bytes=DEFAULT_MAX_BYTES, Py_ssize_t ceiling_messages=0):
        """``ceiling_messages`` (0: ``max_messages``): how deep ``deepen`` may make it."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if max_bytes < 256:
            raise ValueError("max_bytes must be at least 256")
        if ceiling_messages and ceiling_messages < max_messages:
            raise ValueError("ceiling_messages must be at least max_messages")
        self.max_messages = max_messages
        self.ceiling_messages = ceiling_messages or max_messages
        self.max_bytes = max_bytes
        self.slots = NULL
        self.arena = NULL
        self.slot_cap = 0
        self.slot_mask = 0
        self.arena_cap = 0
        self.reserved = NULL
        self.reserved_size = 0
        self.heap_only = 0 if _reserving else 1
        self.wpos = 0
        self.used = 0
        self.tail_off = 0
        self.head = 0
        self.tail = 0
        self.evicted = 0
        self.rejected = 0
        self.epoch = 0
        self.wake_at = 0
        self.hold_at = 0xFFFFFFFFFFFFFFFF
        self.head_mirror = NULL
        self._mirror_view = None

    def __dealloc__(self):
        if self.reserved != NULL:
            ring_release(self.reserved, self.reserved_size)
        else:
            PyMem_Free(self.slots)
            PyMem_Free(self.arena)

    # -- storage management ---------------------------------------------------------------
    cdef int _reserve(self) except -1:
        """Move the slots and the arena into one reservation of all they may ever use; if
        the kernel refuses it, they stay on the heap for good (``heap_only``)."""
        cdef size_t slots_size = _pages(_slot_limit(self.ceiling_messages) * sizeof(MsgRec))
        cdef size_t size = slots_size + _pages(self.max_bytes)
        cdef unsigned char* base = <unsigned char*>ring_reserve(size)
        if base == NULL:
            self.heap_only = 1
            return 0
        if self.slot_cap:
            memcpy(base, self.slots, self.slot_cap * sizeof(MsgRec))
        if self.arena_cap:
            memcpy(base + slots_size, self.arena, self.arena_cap)
        PyMem_Free(self.slots)
        PyMem_Free(self.arena)
        self.slots = <MsgRec*>base
        self.arena = base + slots_size
        self.reserved = base
        self.reserved_size = size
        return 0

    cdef int _grow_slots(self) except -1:
        # A power of two (at most the one at or above max_messages): a slot is s & mask,
        # not a 64-bit division per message. Doubled in place: a record keeps its slot
        # unless its sequence has the old capacity's bit set, and a ring that has not
        # wrapped yet (every young channel) moves none (copying them all was 1.6 % of the
        # daemon while 1,000 channels filled).
        cdef Py_ssize_t old_cap = self.slot_cap
        cdef Py_ssize_t new_cap = max(old_cap * 2, FIRST_SLOTS)
        cdef MsgRec* fresh
        cdef uint64_t s
        if old_cap >= self.max_messages:
            return 0
        if self.reserved == NULL and not self.heap_only and new_cap > FIRST_SLOTS:
            self._reserve()
        fresh = self.slots
        if self.reserved == NULL:
            fresh = <MsgRec*>PyMem_Realloc(self.slots, new_cap * sizeof(MsgRec))
            if fresh == NULL:
                raise MemoryError()
        s = self.tail
        while s < self.head:
            if s & <uint64_t>old_cap:
                fresh[s & (new_cap - 1)] = fresh[s & self.slot_mask]
            s += 1
        self.slots = fresh
        self.slot_cap = new_cap
        self.slot_mask = <uint64_t>(new_cap - 1)
        return 0

    cdef Py_ssize_t _pack(self, unsigned char* dest) noexcept:
        """Copy the held payloads, oldest first, to ``dest`` one after the other and point
        their records there (offsets from ``dest``); their total length."""
        cdef uint64_t s = self.tail
        cdef MsgRec* rec
        cdef Py_ssize_t pos = 0
        while s < self.head:
            rec = &self.slots[s & self.slot_mask]
            memcpy(dest + pos, self.arena + rec.off, rec.len)
            rec.off = <unsigned int>pos
            pos += rec.len
            s += 1
        return pos

    cdef int _grow_arena(self, Py_ssize_t need) except -1:
        """Enlarge the arena to at least ``need`` bytes (``used`` + the next message).

        Payloads that lie in one piece ending at ``wpos`` keep their offsets and the arena
        grows in place, if the next message then fits after them; otherwise live payloads
        are laid out again from 0.
        """
        cdef Py_ssize_t new_cap = max(self.arena_cap * 2, FIRST_ARENA)
        cdef Py_ssize_t length = need - self.used
        cdef unsigned char* fresh
        cdef Py_ssize_t pos
        while new_cap < need:
            new_cap *= 2
        if new_cap > self.max_bytes:
            new_cap = self.max_bytes
        if self.reserved == NULL and not self.heap_only and new_cap > FIRST_ARENA:
            self._reserve()
        if self.head == self.tail or (
                self.tail_off < self.wpos and self.wpos + length <= new_cap):
            if self.reserved == NULL:
                fresh = <unsigned char*>PyMem_Realloc(self.arena, new_cap)
                if fresh == NULL:
                    raise MemoryError()
                self.arena = fresh
            self.arena_cap = new_cap
            if self.head == self.tail:
                self.wpos = 0
                self.tail_off = 0
            return 0
        if self.reserved == NULL:
            fresh = <unsigned char*>PyMem_Malloc(new_cap)
            if fresh == NULL:
                raise MemoryError()
            pos = self._pack(fresh)
            PyMem_Free(self.arena)
            self.arena = fresh
        else:
            # In place, through a copy of what is held (rare: a wrapped ring whose
            # messages outgrow its arena).
            fresh = <unsigned char*>PyMem_Malloc(max(self.used, 1))
            if fresh == NULL:
                raise MemoryError()
            pos = self._pack(fresh)
            memcpy(self.arena, fresh, pos)
            PyMem_Free(fresh)
        self.arena_cap = new_cap
        self.wpos = pos
        self.tail_off = 0
        return 0

    # -- Python API -----------------------------------------------------------------------
    def mirror_head(self, buffer=None):
        """Also write the head (a native-endian u64) into ``buffer`` (writable, 8 bytes,
        8-aligned) after every append, starting now; None stops. The ring keeps a view of
        the buffer, so an mmap cannot be closed or resized under it."""
        cdef unsigned char[::1] view
        if buffer is None:
            self.head_mirror = NULL
            self._mirror_view = None
            return
        view = buffer
        if view.shape[0] < 8:
            raise ValueError("the head mirror needs 8 bytes")
        if (<size_t>&view[0]) % 8:
            raise ValueError("the head mirror must be 8-byte aligned")
        self._mirror_view = view
        self.head_mirror = <uint64_t*>&view[0]
        self.head_mirror[0] = self.head

    def deepen(self, Py_ssize_t max_messages):
        """Hold up to ``max_messages`` from now on (at most ``ceiling_messages``; never
        less than now); the new depth. What it holds stays where it is."""
        if max_messages > self.ceiling_messages:
            max_messages = self.ceiling_messages
        if max_messages > self.max_messages:
            self.max_messages = max_messages
        return self.max_messages

    def append_batch(self, Batch batch, Py_ssize_t start=0):
        """Append the frames of ``batch`` from its ``start``-th on, unchanged; how many."""
        cdef Py_ssize_t i
        if start < 0:
            raise ValueError("start must not be negative")
        for i in range(start, batch.n):
            self.append_rec(batch.buf, &batch.recs[i], NULL, -1)
        return max(0, batch.n - start)

    def append_range(self, ChannelRing source not None, unsigned long long start,
                     unsigned long long end):
        """Append messages ``start`` to ``end`` of ``source`` (another ring) unchanged; how
        many. Raises ValueError unless ``source`` holds them all: a caller that kept a
        range checks ``source.tail <= start`` first, and never gets part of one."""
        cdef uint64_t s
        if source is self:
            raise ValueError("a ring cannot append its own messages")
        if start > end or start < source.tail or end > source.head:
            raise ValueError(
                f"messages {start} to {end} are not in the ring ({source.tail} to {source.head})"
            )
        for s in range(start, end):
            self.append_rec(source.arena, &source.slots[s & source.slot_mask], NULL, -1)
        return <Py_ssize_t>(end - start)

    def discard(self, unsigned long long seq):
        """Let go of every message before ``seq`` (at most up to the head); how many.

        For a ring whose only reader is its owner (a Redis-mode staging ring): what was
        read is freed, so the ring stays as deep as what is still unread (and its storage,
        which never shrinks, only as large as that has been). Not counted as ``evicted``:
        nothing was lost."""
        cdef unsigned long long before = self.evicted
        cdef uint64_t n = 0
        if seq > self.head:
            seq = self.head
        while self.tail < seq:
            self._evict_oldest()
            n += 1
        self.evicted = before
        return n

    cdef uint64_t read_start(self, uint64_t cursor, unsigned long long* lost) noexcept:
        """Where a reader at ``cursor`` reads from: the head at most, the tail at least, and
        in ``lost`` the messages the ring dropped before it saw them (0 otherwise)."""
        lost[0] = 0
        if cursor > self.head:
            return self.head
        if cursor < self.tail:
            lost[0] = self.tail - cursor
            return self.tail
        return cursor

    cdef uint64_t read_end(self, uint64_t s, Py_ssize_t max_messages, Py_ssize_t max_bytes,
                           Py_ssize_t* nbytes) noexcept:
        """Where a read from ``s`` (held: tail <= s <= head) stops: at most ``max_messages``,
        within ``max_bytes`` of payload but at least one message; their bytes in ``nbytes``.
        What ``read`` and the encoders that read the ring in place take."""
        cdef uint64_t end = s
        cdef const MsgRec* rec
        nbytes[0] = 0
        while end < self.head and <Py_ssize_t>(end - s) < max_messages:
            rec = &self.slots[end & self.slot_mask]
            if end > s and nbytes[0] + rec.len > max_bytes:
                break
            nbytes[0] += rec.len
            end += 1
        return end

    def read(self, unsigned long long cursor, Py_ssize_t max_messages=1024,
             Py_ssize_t max_bytes=1 << 20):
        """Copy messages from ``cursor`` on: (Batch, next_cursor, lost).

        ``lost`` counts messages the ring dropped before this reader saw them. At least one
        message is returned when any is available, whatever ``max_bytes`` says.
        """
        cdef Batch batch = Batch()
        cdef uint64_t s = cursor
        cdef uint64_t end
        cdef unsigned long long lost = 0
        cdef Py_ssize_t nbytes = 0
        s = self.read_start(s, &lost)
        # Sized first, then copied: one allocation of the batch, not a doubling per few
        # messages (growing it was 3-4 % of the daemon with 1,000 drains).
        end = self.read_end(s, max_messages, max_bytes, &nbytes)
        if end > s:
            batch.reserve(nbytes, <Py_ssize_t>(end - s))
        while s < end:
            batch.push_rec(self.arena, &self.slots[s & self.slot_mask])
            s += 1
        return batch, s, lost

    def last(self, Py_ssize_t n, Py_ssize_t max_bytes=-1):
        """The newest ``n`` messages (fewer if the ring holds fewer), oldest first.

        With ``max_bytes``, only as many of the newest as fit in it (at least one): the
        ring may be deeper than the history it shows.
        """
        cdef uint64_t start = self.tail
        cdef uint64_t s
        cdef Py_ssize_t nbytes = 0
        cdef MsgRec* rec
        if n <= 0:
            return Batch()
        if self.head - self.tail > <uint64_t>n:
            start = self.head - n
        if max_bytes >= 0:
            s = self.head
            while s > start:
                rec = &self.slots[(s - 1) & self.slot_mask]
                if s < self.head and nbytes + rec.len > max_bytes:
                    break
                nbytes += rec.len
                s -= 1
            start = s
        return self.read(start, n, self.max_bytes + 1)[0]

    def __len__(self):
        return self.head - self.tail


    @property
    def nbytes(self):
        return self.used

    @property
    def allocated(self):
        """Bytes of storage currently allocated (records and payload arena)."""
        return self.slot_cap * sizeof(MsgRec) + self.arena_cap

    @property
    def reserved_bytes(self):
        """Address space reserved for the ring's storage; 0 while it is on the heap (a
        young ring, or one the kernel refused a reservation). Only the pages of it the ring
        has written to are resident: about ``allocated``, in whole pages."""
        return self.reserved_size

