from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from logplexd._native.records cimport F_APPNAME, NFIELDS, MsgRec


cdef class ChannelRing:
    cdef MsgRec* slots           # record of seq s at slots[s & slot_mask]
    cdef Py_ssize_t slot_cap     # a power of two
    cdef uint64_t slot_mask      # slot_cap - 1
    cdef readonly Py_ssize_t max_messages
    # What ``deepen`` may raise max_messages to (the storage is reserved for it).
    cdef readonly Py_ssize_t ceiling_messages
    cdef unsigned char* arena    # payloads, FIFO in a circular byte arena
    cdef Py_ssize_t arena_cap
    cdef readonly Py_ssize_t max_bytes
    cdef Py_ssize_t wpos
    cdef Py_ssize_t used
    # slots[tail & slot_mask].off while the ring holds anything: the oldest record is cold
    # memory by the time the writer needs its offset (1,000 round-robin channels: reading it
    # on every append was 5 % of the daemon in py-spy).
    cdef Py_ssize_t tail_off
    cdef readonly uint64_t head  # next seq to write
    cdef readonly uint64_t tail  # oldest seq held
    cdef public unsigned long long evicted
    cdef public unsigned long long rejected
    cdef public unsigned long long epoch   # router bookkeeping: last dispatch that listed it due
    cdef public object owner               # the registry's Channel, to wake its readers
    # dispatch lists the ring for its owner only once head >= wake_at: the owner sets it to
    # what its waiters need (0: every append; 2**64-1: nobody waits), so an append to a
    # ring nobody is waiting on costs no Python call.
    cdef public unsigned long long wake_at
    # dispatch_until_held appends nothing more to this ring once head >= hold_at: it stops
    # there and says where, so the owner can hold the input (0: held now; 2**64-1: never).
    # The owner keeps it at its consumers' lowest pending hold mark.
    cdef public unsigned long long hold_at
    # Where the head is also written after each append (a slot of a shared mmap'd file, so
    # it survives a kill -9): lets a restart count what was only in memory. NULL: nowhere.
    cdef uint64_t* head_mirror
    cdef object _mirror_view
    # Once the ring outgrows its first heap blocks: the address space its slots and arena
    # lie in, all they may ever use, touched only as they grow (ring.pyx, ring_reserve).
    # NULL: slots and arena are heap blocks (heap_only: the kernel refused a reservation).
    cdef void* reserved
    cdef size_t reserved_size
    cdef int heap_only

    cdef uint64_t read_start(self, uint64_t cursor, unsigned long long* lost) noexcept
    cdef uint64_t read_end(self, uint64_t s, Py_ssize_t max_messages, Py_ssize_t max_bytes,
                           Py_ssize_t* nbytes) noexcept
    cdef int _reserve(self) except -1
    cdef int _grow_slots(self) except -1
    cdef Py_ssize_t _pack(self, unsigned char* dest) noexcept
    cdef int _grow_arena(self, Py_ssize_t need) except -1

    # The append path, here so that dispatch compiles it into its own loop (a call through
    # the type's method table per routed frame, and two more inside, otherwise); the rare
    # growth and reservation stay in ring.pyx.
    cdef inline void _evict_oldest(self) noexcept:
        cdef MsgRec* rec = &self.slots[self.tail & self.slot_mask]
        self.used -= rec.len
        self.tail += 1
        self.evicted += 1
        if self.tail == self.head:
            self.wpos = 0
        else:
            self.tail_off = self.slots[self.tail & self.slot_mask].off

    cdef inline bint _fits(self, Py_ssize_t length) noexcept:
        """Can ``length`` bytes be placed without evicting anything?"""
        cdef Py_ssize_t oldest
        if self.head == self.tail:
            return length <= self.arena_cap
        oldest = self.tail_off
        if self.wpos + length <= self.arena_cap:
            return oldest < self.wpos or oldest >= self.wpos + length
        return oldest < self.wpos and oldest >= length

    cdef inline Py_ssize_t _place(self, Py_ssize_t length) except -1:
        """Reserve ``length`` contiguous bytes, evicting the oldest messages as needed."""
        cdef Py_ssize_t oldest
        if self.head - self.tail >= <uint64_t>self.max_messages:
            self._evict_oldest()
        if self.head - self.tail >= <uint64_t>self.slot_cap:
            self._grow_slots()
        if self.arena_cap < self.max_bytes and not self._fits(length):
            self._grow_arena(self.used + length)
        if self.wpos + length > self.arena_cap:
            # Wrap: first every message ahead of wpos (the oldest), then those in [0, length).
            while self.head != self.tail and self.tail_off >= self.wpos:
                self._evict_oldest()
            self.wpos = 0
        while self.head != self.tail:
            oldest = self.tail_off
            if oldest >= self.wpos and oldest < self.wpos + length:
                self._evict_oldest()
            else:
                break
        return self.wpos

    cdef inline int append_rec(self, const unsigned char* base, const MsgRec* src,
                               const unsigned char* name, Py_ssize_t name_len) except -1:
        """Append one parsed frame; with ``name`` (len >= 0), APP-NAME becomes ``name``."""
        cdef Py_ssize_t length, pos, app_start, app_len, delta, cut
        cdef MsgRec* rec
        cdef int f
        if name_len < 0:
            length = src.len
        else:
            app_len = src.fl[F_APPNAME]
            length = src.len - app_len + name_len
        if length > self.max_bytes:
            self.rejected += 1
            return 0
        pos = self._place(length)
        if self.head == self.tail:
            self.tail_off = pos
        rec = &self.slots[self.head & self.slot_mask]
        rec[0] = src[0]
        rec.off = <unsigned int>pos
        rec.len = <unsigned short>length
        if name_len < 0:
            memcpy(self.arena + pos, base + src.off, length)
        else:
            app_start = src.fs[F_APPNAME]
            cut = app_start + app_len
            memcpy(self.arena + pos, base + src.off, app_start)
            memcpy(self.arena + pos + app_start, name, name_len)
            memcpy(self.arena + pos + app_start + name_len, base + src.off + cut, src.len - cut)
            delta = name_len - app_len
            rec.fl[F_APPNAME] = <unsigned short>name_len
            for f in range(NFIELDS):
                if f != F_APPNAME and rec.fs[f] > app_start:
                    rec.fs[f] = <unsigned short>(rec.fs[f] + delta)
        self.wpos = pos + length
        self.used += length
        self.head += 1
        if self.head_mirror != NULL:
            self.head_mirror[0] = self.head
        return 0
