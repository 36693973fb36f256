"""How the fuzz harnesses turn their input into the reads a peer's writes arrive as."""

from __future__ import annotations


def split(data: bytes, control: bytes) -> list[bytes]:
    """Cut ``data`` into reads: each control byte is one cut length (0 = 1 byte, 255 = rest)."""
    chunks = []
    pos = 0
    for c in control:
        if pos >= len(data):
            break
        size = len(data) - pos if c == 255 else (c % 64) + 1
        chunks.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        chunks.append(data[pos:])
    return chunks
