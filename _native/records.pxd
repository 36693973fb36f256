# The per-frame record every native module shares. Offsets are 16-bit: a frame is at most
# MAX_FRAME_LIMIT bytes, so a record stays small (a ring keeps one per history line).
from libc.stdint cimport int16_t, uint8_t, uint16_t, uint32_t

cdef enum:
    F_TIMESTAMP = 0
    F_HOSTNAME = 1
    F_APPNAME = 2
    F_PROCID = 3
    F_MSGID = 4
    F_SD = 5
    F_MSG = 6
    NFIELDS = 7
    MAX_FRAME_LIMIT = 65000

cdef enum:
    REC_VALID = 1      # RFC 5424 header as the drain parser accepts it
    REC_HAS_APP = 2    # APP-NAME located (valid, or 4th SP-separated piece)

ctypedef struct MsgRec:
    uint32_t off          # payload start in the owning buffer
    uint16_t len          # payload length
    int16_t pri           # -1 when not valid
    uint8_t flags
    uint16_t fs[7]        # field start, relative to off
    uint16_t fl[7]        # field length

