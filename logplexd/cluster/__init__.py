"""Several nodes on one Redis (issue 11), the data plane: history, tails and drains.

``DataPlane`` (plane.py) writes each channel's messages to a Redis stream and follows the
streams local readers need; ``ClusterRegistry`` routes ingestion into it; ``ClusterReads``
serves history from the streams; ``ClusterDrains`` runs each drain on the node holding
its lease. Sans-IO cores: ``buffer.OutboundBuffer`` and ``lease.Lease``.
"""

from .birth import birth_hook
from .buffer import OutboundBuffer
from .drains import ClusterDrains
from .lease import Lease, LeaseEvent, LeaseState
from .plane import DataPlane, Follow, Keys
from .reads import ClusterReads
from .registry import ClusterRegistry

__all__ = [
    "ClusterDrains",
    "ClusterReads",
    "ClusterRegistry",
    "DataPlane",
    "Follow",
    "Keys",
    "Lease",
    "LeaseEvent",
    "LeaseState",
    "OutboundBuffer",
    "birth_hook",
]
