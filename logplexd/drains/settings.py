"""``DrainSettings``: the timeouts, batch sizes and pacing every drain of a daemon shares."""

from __future__ import annotations

from dataclasses import dataclass

from .policy import HTTP_RETRY_AFTER_CAP, L14_INTERVAL


@dataclass(frozen=True)
class DrainSettings:
    syslog_connect_timeout: float = 4.0
    syslog_send_timeout: float = 4.0
    # Bytes of octet-counted frames per write. One drain turn must be able to carry what
    # several inputs' reads (128 KB each) brought in one scheduling round, or it falls behind.
    syslog_batch_bytes: int = 1024 * 1024
    syslog_backoff_cap: float = 300.0
    http_connect_timeout: float = 3.0
    http_request_timeout: float = 5.0
    http_batch_bytes: int = 102_400
    http_max_attempts: int = 3
    http_backoff_base: float = 0.5
    http_backoff_cap: float = 30.0
    # A 429 or 503 is retried after the Retry-After it gives (delta-seconds or an HTTP-date),
    # never longer than this; without one, after the backoff above. Either way it does not
    # use up one of the batch's ``http_max_attempts``.
    http_retry_after_cap: float = HTTP_RETRY_AFTER_CAP
    max_response_body: int = 1 << 20
    # Messages taken from the ring at a time (the one batch a drain holds).
    read_max_messages: int = 16384
    # A drain with fewer than linger_messages waiting gathers for up to linger seconds
    # before it writes (bounded latency for far fewer writes and wake-ups).
    linger: float = 0.02
    linger_messages: int = 256
    shutdown_grace: float = 5.0
    # "pushback": a drain that takes every write whole but falls behind holds its channel's
    # inputs (the router is the bottleneck); "drop": it is lapped and told with an L10, as
    # the original Logplex does whatever the cause.
    overflow: str = "pushback"
    # A receiver that takes nothing of a pending write for this long (or not all of it in
    # ``slow_write_whole_after``) is a slow consumer: it no longer holds its channel's inputs.
    # While it is judged, a connection that also carries other channels waits: 0.1 s cost
    # the other channel 35 % of its rate over 500,000 messages (bench/e2e/stall.py), 20 ms
    # 9-25 %, 5 ms 2-9 %. A receiver that keeps up takes some of a write far sooner, even
    # loaded (bench/e2e/run.py --metrics judged_slow: none judged in any run), and one
    # misjudged slow only stops holding (its backlog waits in the ring, then on disk).
    slow_write_after: float = 0.005
    # One that keeps taking some of a write has this long for the whole of it (a write is at
    # most one payload of the ring's messages: 2 MB takes ~10 ms on loopback).
    slow_write_whole_after: float = 0.1
    # A drain failing on a TLS certificate repeats its L14 notice at most this often.
    l14_interval: float = L14_INTERVAL
