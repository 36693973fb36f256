"""Drains: delivery of every channel message to syslog (TCP, TLS) and HTTP(S) endpoints.

The daemon creates one ``DrainManager``, runs ``manager.run`` in its nursery, and the
control API calls ``add_drain`` / ``update_drain`` / ``remove_drain`` / ``remove_channel``.
"""

from ..store import InvalidDrainUrl  # raised by the managers' add_drain and update_drain
from .delivery import DrainHandle
from .drain import Drain, DrainStats
from .feed import DrainCounters, DrainFeed, LossTracker, Payload, Refilled, RingRefill
from .gated import GatedDrainManager
from .http import HttpDrain, HttpExchange, build_request, frame_id
from .manager import DrainManager
from .policy import Outcome, classify, http_retry_backoff, syslog_reconnect_backoff
from .settings import DrainSettings
from .state import TRANSITIONS, DrainEvent, DrainState, InvalidTransition, next_state
from .sync import DrainRunner, attach_drains
from .syslog import SyslogDrain
from .target import delivery_target
from .transport import TlsContexts

__all__ = [
    "TRANSITIONS",
    "Drain",
    "DrainCounters",
    "DrainEvent",
    "DrainFeed",
    "DrainHandle",
    "DrainManager",
    "DrainRunner",
    "DrainSettings",
    "DrainState",
    "DrainStats",
    "GatedDrainManager",
    "HttpDrain",
    "HttpExchange",
    "InvalidDrainUrl",
    "InvalidTransition",
    "LossTracker",
    "Outcome",
    "Payload",
    "Refilled",
    "RingRefill",
    "SyslogDrain",
    "TlsContexts",
    "attach_drains",
    "build_request",
    "classify",
    "delivery_target",
    "frame_id",
    "http_retry_backoff",
    "next_state",
    "syslog_reconnect_backoff",
]
