"""The connection state of one drain: one Enum and one transition table for every kind."""

from __future__ import annotations

from enum import Enum


class DrainState(Enum):
    # No connection and nothing being attempted (idle with nothing to send, or just started).
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    # Connected and waiting for messages.
    CONNECTED = "connected"
    # A write (syslog) or a request (HTTP) is in flight.
    SENDING = "sending"
    # The last attempt failed; waiting before the next one.
    BACKOFF = "backoff"
    STOPPED = "stopped"


class DrainEvent(Enum):
    CONNECT = "connect"
    CONNECTED = "connected"
    SEND = "send"
    # The write completed / the endpoint answered; the connection stays usable.
    SENT = "sent"
    # A connect or send attempt failed: the connection (if any) is gone.
    FAILED = "failed"
    # The connection was closed on purpose or by the peer, without a failed attempt.
    CLOSED = "closed"
    STOP = "stop"


S, E = DrainState, DrainEvent

TRANSITIONS: dict[tuple[DrainState, DrainEvent], DrainState] = {
    (S.DISCONNECTED, E.CONNECT): S.CONNECTING,
    (S.DISCONNECTED, E.CLOSED): S.DISCONNECTED,
    (S.BACKOFF, E.CONNECT): S.CONNECTING,
    (S.BACKOFF, E.CLOSED): S.DISCONNECTED,
    (S.CONNECTING, E.CONNECTED): S.CONNECTED,
    (S.CONNECTING, E.FAILED): S.BACKOFF,
    (S.CONNECTING, E.CLOSED): S.DISCONNECTED,
    (S.CONNECTED, E.SEND): S.SENDING,
    (S.CONNECTED, E.FAILED): S.BACKOFF,
    (S.CONNECTED, E.CLOSED): S.DISCONNECTED,
    (S.SENDING, E.SENT): S.CONNECTED,
    (S.SENDING, E.FAILED): S.BACKOFF,
    (S.SENDING, E.CLOSED): S.DISCONNECTED,
    **{(state, E.STOP): S.STOPPED for state in DrainState},
}


class InvalidTransition(RuntimeError):
    pass


def next_state(state: DrainState, event: DrainEvent) -> DrainState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{event.value} in state {state.value}") from None
