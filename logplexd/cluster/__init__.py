"""Several nodes on one Redis (issue 11), the data plane: history, tails and drains.

``DataPlane`` (plane.py) writes each channel's messages to a Redis stream and follows the
streams local readers need; ``ClusterRegistry`` routes ingestion into it; ``ClusterReads``
serves history from the streams; ``ClusterDrains`` runs each drain on the node holding
its lease. Sans-IO cores: ``buffer.OutboundBuffer`` and ``lease.Lease``.

The plane's parts are private modules: ``_stream`` (a channel's keys, the scripts that
append (``APPEND``; ``PROPOSE`` and ``SETTLE`` around plain XADDs), the entry codec, a
key's cluster slot: ``Keys``, ``decode_entry``, ``CHECKPOINT_TTL_MS``, ``slot_of``),
``_link`` (the Redis client, reachability, round trips by kind: ``TRIP_KINDS``,
``CLOSE_GRACE``), ``_writer``, ``_follow`` (``Follow``, ``POLL_IDLE``, ``SWEEP_SLICE``),
``_history``, ``_pushback`` (``ChannelPushback``: holding a channel's inputs while this
node is behind on it, ``HOLD_KEEPS`` x ``keep``, under the ``READER_SLACK`` x ``keep``
the stream keeps for a follower behind), ``_unsent`` (``UnsentLedger``: what a
``kill -9`` took before Redis had it, told at the next start) and ``_node_dir``
(``NodeDir``: the data dir held for the process's life, and the incarnations it recorded,
which the next process on it knows dead: ``lease.Incarnations``), and ``_spilled``
(``SpilledSeqs``: the stream sequences of a drain's disk backlog, for its checkpoint),
``_carried`` (``CarriedBacklog``, ``take_carried``: disk backlogs a clean stop hands to
the node's next process) and ``_journal`` (``SpillJournal``, ``take_journaled``: the same
after a ``kill -9``, from what each drain journaled as it spilled).
"""

from ._carried import CarriedBacklog
from ._carried import take as take_carried
from ._follow import (
    NEW_FOLLOW_WAIT,
    POLL_IDLE,
    REPORT_HEARTBEAT,
    SWEEP_SLICE,
    Follow,
    report_due,
)
from ._journal import SpillJournal
from ._journal import take as take_journaled
from ._link import CLOSE_GRACE, READ_BLOCK_MS, TRIP_KINDS
from ._node_dir import NodeDir
from ._pushback import HOLD_KEEPS, ChannelPushback, OutboundGate
from ._spilled import SpilledSeqs
from ._stream import (
    APPEND,
    CHECKPOINT_TTL_MS,
    DRAIN_STALE_MS,
    PROPOSE,
    READER_SLACK,
    READER_STALE_MS,
    SETTLE,
    UNANSWERED,
    EntryBody,
    Keys,
    decode_entry,
    slot_of,
)
from ._unsent import UnsentLedger
from ._writer import FLUSH_INTERVAL, flush_linger
from .birth import birth_hook
from .buffer import OutboundBuffer
from .drains import ClusterDrains
from .lease import Incarnations, Lease, LeaseEvent, LeaseState
from .plane import DataPlane
from .reads import ClusterReads, ReadStart
from .registry import COLLECT_SKIPS, ClusterRegistry

__all__ = [
    "take_carried",
    "take_journaled",
    "SpillJournal",
    "APPEND",
    "CHECKPOINT_TTL_MS",
    "CLOSE_GRACE",
    "COLLECT_SKIPS",
    "DRAIN_STALE_MS",
    "FLUSH_INTERVAL",
    "HOLD_KEEPS",
    "NEW_FOLLOW_WAIT",
    "POLL_IDLE",
    "READ_BLOCK_MS",
    "PROPOSE",
    "READER_SLACK",
    "READER_STALE_MS",
    "REPORT_HEARTBEAT",
    "SETTLE",
    "SWEEP_SLICE",
    "TRIP_KINDS",
    "UNANSWERED",
    "UnsentLedger",
    "CarriedBacklog",
    "ChannelPushback",
    "ClusterDrains",
    "ClusterReads",
    "ClusterRegistry",
    "DataPlane",
    "EntryBody",
    "Follow",
    "SpilledSeqs",
    "Incarnations",
    "Keys",
    "Lease",
    "LeaseEvent",
    "LeaseState",
    "NodeDir",
    "OutboundBuffer",
    "OutboundGate",
    "ReadStart",
    "birth_hook",
    "decode_entry",
    "flush_linger",
    "report_due",
    "slot_of",
]
