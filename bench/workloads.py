"""Deterministic input for the benchmarks: the realistic frame mix of the foundation issue."""

import random

TOKENS = [f"t.{i:08x}-83e3-4384-a062-010f886da916" for i in range(16)]


def realistic_frames(n: int, seed: int = 7) -> list[bytes]:
    """~120-byte frames; 1 in 5 with structured data, 1 in 500 of about 8 KB."""
    rng = random.Random(seed)
    frames = []
    for i in range(n):
        token = TOKENS[i % len(TOKENS)]
        sd = f'[meta sequenceId="{i}" tag="a\\]b"]' if rng.random() < 0.2 else "-"
        if rng.random() < 0.002:
            text = "x" * 8000
        else:
            text = f"at=info method=GET path=/ status=200 bytes={rng.randint(0, 99999)}"
        msg = (
            f"<134>1 2024-05-01T12:00:00.{i % 1000000:06d}Z host {token} web.{i % 9} - {sd} {text}"
        )
        frames.append(msg.encode())
    return frames


def octet_stream(frames: list[bytes]) -> bytes:
    return b"".join(b"%d %s" % (len(f), f) for f in frames)
