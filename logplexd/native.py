"""The compiled hot path. logplexd does not run without it: there is no slow fallback."""

from __future__ import annotations


class NativeUnavailable(ImportError):
    pass


try:
    from ._native.batch import Batch
    from ._native.encode import (
        channel_log_frames,
        format_time,
        http_frames,
        l10_http,
        l10_syslog,
        l11_line,
        session_lines,
        syslog_frames,
        syslog_frames_from_ring,
    )
    from ._native.framer import OctetFramer, parse_body, parse_frames
    from ._native.resp import (
        NEED_DATA,
        RespError,
        RespProtocolError,
        RespReader,
        pack_command,
        pack_commands,
        pack_pipeline,
    )
    from ._native.ring import ChannelRing, reserve_address_space
    from ._native.router import (
        Firehose,
        TokenTable,
        dispatch,
        dispatch_to,
        dispatch_to_until_held,
        dispatch_until_held,
    )
    from ._native.wire import octet_frames, octet_frames_from_ring, octet_frames_upto
except ImportError as exc:  # pragma: no cover - exercised by the CLI test with a broken path
    raise NativeUnavailable(
        "logplexd: the compiled module logplexd._native is missing or failed to load "
        f"({exc}). Reinstall with a C compiler present: pip install ."
    ) from exc

__all__ = [
    "NEED_DATA",
    "Batch",
    "ChannelRing",
    "Firehose",
    "NativeUnavailable",
    "OctetFramer",
    "RespError",
    "RespProtocolError",
    "RespReader",
    "TokenTable",
    "channel_log_frames",
    "dispatch",
    "dispatch_to",
    "dispatch_to_until_held",
    "dispatch_until_held",
    "format_time",
    "http_frames",
    "l10_http",
    "l10_syslog",
    "l11_line",
    "octet_frames",
    "octet_frames_from_ring",
    "octet_frames_upto",
    "pack_command",
    "pack_commands",
    "pack_pipeline",
    "parse_body",
    "parse_frames",
    "reserve_address_space",
    "session_lines",
    "syslog_frames",
    "syslog_frames_from_ring",
]
