"""Drains: delivery of every channel message to syslog (TCP, TLS) and HTTP(S) endpoints.

The daemon creates one ``DrainManager``, runs ``manager.run`` in its nursery, and the
control API calls ``add_drain`` / ``update_drain`` / ``remove_drain`` / ``remove_channel``.
"""

from .drain import Drain, DrainSettings, DrainStats
from .feed import DrainCounters, DrainFeed, LossTracker, Payload
from .gated import GatedDrainManager
from .http import HttpDrain, HttpExchange, build_request, frame_id
from .manager import DrainManager
from .policy import Outcome, classify, http_retry_backoff, syslog_reconnect_backoff
from .state import TRANSITIONS, DrainEvent, DrainState, InvalidTransition, next_state
from .sync import DrainRunner, attach_drains
from .syslog import SyslogDrain
from .target import DrainKind, DrainTarget, InvalidDrainUrl, parse_drain_url
from .transport import TlsContexts

__all__ = [
    "TRANSITIONS",
    "Drain",
    "DrainCounters",
    "DrainEvent",
    "DrainFeed",
    "DrainKind",
    "DrainManager",
    "DrainRunner",
    "GatedDrainManager",
    "DrainSettings",
    "DrainState",
    "DrainStats",
    "DrainTarget",
    "HttpDrain",
    "HttpExchange",
    "InvalidDrainUrl",
    "InvalidTransition",
    "LossTracker",
    "Outcome",
    "Payload",
    "SyslogDrain",
    "TlsContexts",
    "attach_drains",
    "build_request",
    "classify",
    "frame_id",
    "http_retry_backoff",
    "next_state",
    "parse_drain_url",
    "syslog_reconnect_backoff",
]
