from libc.stdint cimport uint64_t

from logplexd._native.records cimport MsgRec


cdef class ChannelRing:
    cdef MsgRec* slots           # record of seq s at slots[s & slot_mask]
    cdef Py_ssize_t slot_cap     # a power of two
    cdef uint64_t slot_mask      # slot_cap - 1
    cdef readonly Py_ssize_t max_messages
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
    # dispatch lists the ring as touched only once head >= wake_at: the owner sets it to
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
    cdef int append_rec(self, const unsigned char* base, const MsgRec* src,
                        const unsigned char* name, Py_ssize_t name_len) except -1
    cdef int _reserve(self) except -1
    cdef int _grow_slots(self) except -1
    cdef Py_ssize_t _pack(self, unsigned char* dest) noexcept
    cdef int _grow_arena(self, Py_ssize_t need) except -1
    cdef void _evict_oldest(self) noexcept
    cdef bint _fits(self, Py_ssize_t length) noexcept
    cdef Py_ssize_t _place(self, Py_ssize_t length) except -1
