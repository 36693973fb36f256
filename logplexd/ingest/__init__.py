"""Ingest: where producers' bytes enter and become routed batches.

- ``SyslogInput`` (``syslog.py``): TCP and TLS syslog, octet-counted or LF framed; a busy
  plain-TCP connection may be read and framed by a worker thread (``_thread.py``); which
  connection makes room at the connection limit is ``_admission.py``'s choice.
- ``LogsIngest`` and ``LogsListener`` (``logs.py``): ``POST /logs`` (``application/logplex-1``)
  as a sans-IO core and its HTTP adapter.

Both frame with the native ``OctetFramer``/``parse_body`` and hand whole batches to a
``Registry`` (``router``) with one call per read.
"""

from .logs import (
    DEFAULT_DEDUP_ENTRIES,
    DEFAULT_DEDUP_WINDOW,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_DECOMPRESSED,
    FrameIdWindow,
    LogsIngest,
    LogsIngestStats,
    LogsListener,
    LogsResponse,
)
from .syslog import OFFLOAD_READ_BYTES, ServerCertificate, SyslogInput, SyslogInputStats

__all__ = [
    "DEFAULT_DEDUP_ENTRIES",
    "DEFAULT_DEDUP_WINDOW",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_DECOMPRESSED",
    "OFFLOAD_READ_BYTES",
    "FrameIdWindow",
    "LogsIngest",
    "LogsIngestStats",
    "LogsListener",
    "LogsResponse",
    "ServerCertificate",
    "SyslogInput",
    "SyslogInputStats",
]
