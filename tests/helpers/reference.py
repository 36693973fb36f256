"""Pure-Python reference ("oracle") for the native hot path in ``_native/``.

Written from the contract in ``_native/README.md`` only, never from the Cython code, so that
the property tests comparing the two catch bugs in either. Everything here favours being
obviously right over being fast: byte strings, indexes and small loops.

Ambiguities in the README, and the reading chosen here (keep in sync with the tests):

- Auto mode: CR, LF and SP before the first significant byte are consumed while choosing
  the mode (they never become part of a newline-delimited frame).
- Resync ("discard through the next LF") starts at the byte that made the frame malformed;
  if that byte is itself LF, the resync ends there.
- Newline mode: a line that is empty once its one CR is removed (``\\r\\n``) is an empty line.
- ``parse_body``: a frame already counted as malformed (oversized, or a resync) that is cut
  short by the end of the body is not counted a second time.
- PRI: "1 to 3 digits, value 0..191", so leading zeros (``<013>``) are accepted.
- SD: an element ends at the first unescaped ``]``, so an empty element ``[]`` is accepted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

SP = 0x20
CR = 0x0D
LF = 0x0A
DIGITS = b"0123456789"
NONZERO_DIGITS = b"123456789"
DEFAULT_MAX_FRAME = 10240
MAX_FRAME_LIMIT = 65000
# "up to 8 digits then one SP": a 9th digit is malformed.
MAX_LEN_DIGITS = 8

FIELD_NAMES = ("timestamp", "hostname", "app", "procid", "msgid", "sd", "msg")


# --------------------------------------------------------------------------------------------
# Stream framing
# --------------------------------------------------------------------------------------------


@dataclass
class ReferenceFramer:
    """Incremental RFC 6587 framer: octet-counted, or newline-delimited when the stream
    starts with ``<``. ``mode`` may be forced to ``"octet"`` (what ``parse_body`` does)."""

    max_frame: int = DEFAULT_MAX_FRAME
    mode: str = "auto"
    malformed: int = 0
    frames_total: int = 0
    # Unconsumed input. Only ever holds an incomplete frame (or its header).
    _buf: bytearray = field(default_factory=bytearray)
    # Bytes of an oversized octet-counted frame still to throw away as they arrive.
    _skip: int = 0
    # True while discarding through the next LF after a malformed frame.
    _resync: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_frame <= MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be 1..{MAX_FRAME_LIMIT}")
        if self.mode not in ("auto", "octet", "lf"):
            raise ValueError(f"bad mode {self.mode!r}")

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def incomplete(self) -> bool:
        """A frame has started (digits, header, or part of the payload) but not ended."""
        return self.mode == "octet" and not self._resync and self._skip == 0 and bool(self._buf)

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """Frame one chunk: (complete payloads in order, malformed frames found now)."""
        self._buf += data
        frames: list[bytes] = []
        before = self.malformed
        pos = self._run(frames)
        # Keep only what is still undecided; ``_run`` never leaves consumed bytes behind.
        del self._buf[:pos]
        self.frames_total += len(frames)
        return frames, self.malformed - before

    # One pass over the buffer; returns how many bytes of it were consumed.
    def _run(self, frames: list[bytes]) -> int:
        buf = self._buf
        pos = 0
        while True:
            if self._skip:
                take = min(self._skip, len(buf) - pos)
                self._skip -= take
                pos += take
                if self._skip:
                    return pos
                continue
            if self._resync:
                lf = buf.find(b"\n", pos)
                if lf < 0:
                    # Nothing to keep: the memory bound holds however long the garbage runs.
                    return len(buf)
                self._resync = False
                pos = lf + 1
                continue
            if self.mode == "auto":
                while pos < len(buf) and buf[pos] in (CR, LF, SP):
                    pos += 1
                if pos == len(buf):
                    return pos
                self.mode = "lf" if buf[pos] == ord("<") else "octet"
                continue
            if self.mode == "lf":
                step = self._lf_step(buf, pos, frames)
            else:
                # Rule 1: CR, LF and SP between frames are dropped without a word.
                while pos < len(buf) and buf[pos] in (CR, LF, SP):
                    pos += 1
                if pos == len(buf):
                    return pos
                step = self._octet_step(buf, pos, frames)
            if step is None:
                return pos
            pos = step

    def _malformed_resync(self) -> None:
        self.malformed += 1
        self._resync = True

    # Each step decides one frame starting at ``pos`` and returns the position after what it
    # consumed, or None when it needs more input first.
    def _octet_step(self, buf: bytearray, pos: int, frames: list[bytes]) -> int | None:
        if buf[pos] not in NONZERO_DIGITS:
            self._malformed_resync()
            return pos
        end = pos
        while end < len(buf) and buf[end] in DIGITS:
            end += 1
        ndigits = end - pos
        if ndigits > MAX_LEN_DIGITS:
            self._malformed_resync()
            return pos
        if end == len(buf):
            return None  # more digits or the SP may follow
        if buf[end] != SP:
            self._malformed_resync()
            return pos
        length = int(buf[pos:end])
        start = end + 1
        if length > self.max_frame:
            self.malformed += 1
            self._skip = length
            return start
        if len(buf) - start < length:
            return None
        frames.append(bytes(buf[start : start + length]))
        return start + length

    def _lf_step(self, buf: bytearray, pos: int, frames: list[bytes]) -> int | None:
        lf = buf.find(b"\n", pos)
        if lf < 0:
            pending = len(buf) - pos
            # The line is certainly too long once it holds more than max_frame bytes that
            # cannot be its trailing CR: say so now and stop holding it.
            too_long = pending > self.max_frame + 1 or (
                pending == self.max_frame + 1 and buf[-1] != CR
            )
            if too_long:
                self._malformed_resync()
                return len(buf)
            return None
        line = bytes(buf[pos:lf])
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_frame:
            self.malformed += 1
        elif line:
            frames.append(line)
        return lf + 1


def reference_parse_body(
    data: bytes, max_frame: int = DEFAULT_MAX_FRAME
) -> tuple[list[bytes], int]:
    """One whole HTTP body: (payloads, malformed). Octet-counted only; a trailing frame whose
    header or payload is cut short is malformed (the body lies about its length)."""
    framer = ReferenceFramer(max_frame=max_frame, mode="octet")
    frames, _ = framer.feed(data)
    malformed = framer.malformed
    if framer.incomplete:
        malformed += 1
    return frames, malformed


def reference_stream(data: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> tuple[list[bytes], int]:
    """A whole TCP stream fed at once: (payloads, malformed total)."""
    framer = ReferenceFramer(max_frame=max_frame)
    frames, _ = framer.feed(data)
    return frames, framer.malformed


# --------------------------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------------------------


def _word(p: bytes, i: int) -> tuple[bytes, int] | None:
    """A non-empty run of non-SP bytes starting at ``i``, followed by one SP (consumed)."""
    end = p.find(b" ", i)
    if end < 0 or end == i:
        return None
    return p[i:end], end + 1


def _sd(p: bytes, i: int) -> int | None:
    """End index of STRUCTURED-DATA starting at ``i`` (``-`` or ``[...]`` elements)."""
    if p[i : i + 1] == b"-":
        return i + 1
    if p[i : i + 1] != b"[":
        return None
    while p[i : i + 1] == b"[":
        i += 1
        while True:
            if i >= len(p):
                return None  # element never closed
            if p[i] == ord("\\"):
                i += 2  # the escaped byte, whatever it is, cannot close the element
            elif p[i] == ord("]"):
                i += 1
                break
            else:
                i += 1
    return i


def _valid_fields(p: bytes) -> dict[str, object] | None:
    """Fields of an RFC 5424 frame, or None when it is not valid."""
    if not p.startswith(b"<"):
        return None
    close = p.find(b">", 1)
    if close < 0:
        return None
    pri_text = p[1:close]
    if not 1 <= len(pri_text) <= 3 or any(b not in DIGITS for b in pri_text):
        return None
    pri = int(pri_text)
    if pri > 191:
        return None
    if p[close + 1 : close + 3] != b"1 ":
        return None
    i = close + 3
    out: dict[str, object] = {"pri": pri, "valid": True, "has_app": True}
    for name in ("timestamp", "hostname", "app", "procid", "msgid"):
        got = _word(p, i)
        if got is None:
            return None
        out[name], i = got
    sd_end = _sd(p, i)
    if sd_end is None:
        return None
    out["sd"] = p[i:sd_end]
    if sd_end == len(p):
        out["msg"] = b""
    elif p[sd_end] == SP:
        out["msg"] = p[sd_end + 1 :]
    else:
        return None
    return out


def reference_fields(payload: bytes) -> dict[str, object]:
    """The same dict as the native ``Batch.fields(i)``."""
    p = bytes(payload)
    valid = _valid_fields(p)
    if valid is not None:
        return valid
    out: dict[str, object] = {"pri": -1, "valid": False, "has_app": False}
    out.update(dict.fromkeys(FIELD_NAMES))
    # Routing still needs APP-NAME: the 4th piece when splitting on single spaces.
    pieces = p.split(b" ")
    if len(pieces) > 3 and pieces[3]:
        out["has_app"] = True
        out["app"] = pieces[3]
    return out


# --------------------------------------------------------------------------------------------
# Output formats (byte-compatible with the original Logplex)
# --------------------------------------------------------------------------------------------


def _octet(body: bytes) -> bytes:
    return str(len(body)).encode() + b" " + body


def _header(f: dict[str, object]) -> bytes:
    return b"<%d>1 %s" % (f["pri"], f["timestamp"])


def reference_syslog_frame(payload: bytes, drain_token: bytes) -> bytes | None:
    """``LEN <PRI>1 TIME DRAINTOKEN APP PROCID - - MSG`` plus LF unless MSG ends in one."""
    f = reference_fields(payload)
    if not f["valid"]:
        return None
    msg = f["msg"]
    assert isinstance(msg, bytes)
    body = b"%s %s %s %s - - %s" % (_header(f), drain_token, f["app"], f["procid"], msg)
    if not msg.endswith(b"\n"):
        body += b"\n"
    return _octet(body)


def _http_body(f: dict[str, object]) -> bytes:
    return b"%s host %s %s - %s" % (_header(f), f["app"], f["procid"], f["msg"])


def reference_http_frame(payload: bytes) -> bytes | None:
    """``LEN <PRI>1 TIME host APP PROCID - MSG``: no SD, no LF added."""
    f = reference_fields(payload)
    if not f["valid"]:
        return None
    return _octet(_http_body(f))


def reference_channel_log_frame(payload: bytes) -> bytes | None:
    """The HTTP drain frame with an LF that LEN counts."""
    f = reference_fields(payload)
    if not f["valid"]:
        return None
    return _octet(_http_body(f) + b"\n")


def reference_session_line(payload: bytes) -> bytes | None:
    """``TIME APP[PROCID]: MSG`` LF, without doubling a trailing LF (or CRLF) of MSG."""
    f = reference_fields(payload)
    if not f["valid"]:
        return None
    msg = f["msg"]
    assert isinstance(msg, bytes)
    if msg.endswith(b"\r\n"):
        msg = msg[:-2]
    elif msg.endswith(b"\n"):
        msg = msg[:-1]
    return b"%s %s[%s]: %s\n" % (f["timestamp"], f["app"], f["procid"], msg)


def reference_session_match(payload: bytes, ps: bytes | None, source: bytes | None) -> bool:
    """Session filters: ``ps`` is PROCID or its prefix before a dot, ``source`` is APP-NAME."""
    f = reference_fields(payload)
    procid, app = f["procid"], f["app"]
    if ps is not None:
        if not isinstance(procid, bytes):
            return False
        if procid != ps and not procid.startswith(ps + b"."):
            return False
    return source is None or app == source


def reference_session_lines(
    payloads: list[bytes], ps: bytes | None = None, source: bytes | None = None
) -> tuple[bytes, int]:
    lines = []
    for p in payloads:
        line = reference_session_line(p)
        if line is not None and reference_session_match(p, ps, source):
            lines.append(line)
    return b"".join(lines), len(lines)


def reference_chunks(frames: list[bytes | None], start: int, max_bytes: int) -> tuple[bytes, int]:
    """Greedy batching of encoded frames (None = invalid, skipped) from ``start``: take
    frames while the total stays within ``max_bytes``, but always at least one.
    Returns (bytes, count); the index to resume from is not pinned down by the spec."""
    out = b""
    count = 0
    for frame in frames[start:]:
        if frame is None:
            continue
        if count and len(out) + len(frame) > max_bytes:
            break
        out += frame
        count += 1
    return out, count


def reference_format_time(epoch_seconds: float) -> bytes:
    """``YYYY-MM-DDTHH:MM:SS+00:00`` in UTC, fraction dropped."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(epoch_seconds)).encode()


def _l10_text(n: int, since: float) -> bytes:
    return b"Error L10 (output buffer overflow): %d messages dropped since %s." % (
        n,
        reference_format_time(since),
    )


def reference_l10_syslog(drain_token: bytes, n: int, since: float, now: float) -> bytes:
    body = b"<172>1 %s %s heroku logplex - - %s\n" % (
        reference_format_time(now),
        drain_token,
        _l10_text(n, since),
    )
    return _octet(body)


def reference_l10_http(n: int, since: float, now: float) -> bytes:
    body = b"<172>1 %s host heroku logplex - %s" % (reference_format_time(now), _l10_text(n, since))
    return _octet(body)


def reference_l11_line(n: int, since: float, now: float) -> bytes:
    return (
        b"%s logplex[1]: Error L11 (Tail buffer overflow) -> "
        b"This tail session dropped %d messages since %s.\n"
        % (reference_format_time(now), n, reference_format_time(since))
    )


# -- RESP (_native/resp.pyx) -----------------------------------------------------------------
# The oracle parses a whole input at once and recursively; errors are ("error", message)
# tuples so that comparisons need no exception class.


class ReferenceRespError(ValueError):
    """Input that is not RESP2."""


def reference_resp_replies(data: bytes) -> list[object]:
    """Every complete reply in ``data`` (a trailing incomplete one is left out)."""
    out: list[object] = []
    pos = 0
    while True:
        parsed = _resp_value(data, pos)
        if parsed is None:
            return out
        value, pos = parsed
        out.append(value)


def _resp_value(data: bytes, pos: int) -> tuple[object, int] | None:
    end = data.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, text = data[pos : pos + 1], data[pos + 1 : end]
    after = end + 2
    if kind == b"+":
        return text, after
    if kind == b"-":
        return ("error", text.decode("utf-8", "replace")), after
    if kind == b":":
        return _resp_int(text), after
    if kind in (b"$", b"*"):
        size = _resp_int(text)
        if size < -1:
            raise ReferenceRespError("negative length")
        if size == -1:
            return None, after
    if kind == b"$":
        if len(data) < after + size + 2:
            return None
        if data[after + size : after + size + 2] != b"\r\n":
            raise ReferenceRespError("bulk longer than said")
        return data[after : after + size], after + size + 2
    if kind == b"*":
        items: list[object] = []
        for _ in range(size):
            parsed = _resp_value(data, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    raise ReferenceRespError(f"type byte {kind!r}")


def _resp_int(text: bytes) -> int:
    digits = text[1:] if text.startswith(b"-") else text
    if not digits or not digits.isdigit():
        raise ReferenceRespError(f"not an integer: {text!r}")
    return int(text)


def reference_resp_command(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
