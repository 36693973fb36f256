"""The process: ``Daemon`` composes the stages (ingest, router, tails, drains, store,
cluster, API) in one nursery; beside it systemd integration, logging and ``/metrics``."""

from ._allocator import fit_overcommit, keep_heap, no_huge_pages, strict_overcommit
from .compose import BoundPorts, Daemon, reload_from_sources, run, run_until_signalled

__all__ = [
    "BoundPorts",
    "Daemon",
    "fit_overcommit",
    "keep_heap",
    "no_huge_pages",
    "reload_from_sources",
    "run",
    "run_until_signalled",
    "strict_overcommit",
]
