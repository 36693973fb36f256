"""A store with something of everything in it, and a picture of its state to compare."""

from __future__ import annotations

from typing import Any

from logplexd.store import CredentialRecord


def state_of(store: Any) -> dict:
    """Every record the store holds, in a stable order: equal pictures, equal stores."""
    return {
        "channels": sorted(store.channels(), key=lambda c: c.name),
        "tokens": sorted(store.tokens(), key=lambda t: t.id),
        "drains": sorted(store.drains(), key=lambda d: d.id),
        "credentials": sorted(store.credentials(), key=lambda c: c.id),
    }


async def populate(store: Any) -> None:
    """A v2 channel, a v3 channel whose tokens changed, three drains, one credential."""
    await store.create_channel(label="legacy", token_names=["app", "web"])
    await store.put_channel("app-1", ["a", "b"])
    await store.create_drain("app-1", "syslog://h.example", max_drains=6)
    await store.create_drain("app-1", None, max_drains=6)
    await store.create_drain("1", "https://u:p@x.example/logs", max_drains=6)
    await store.add_credential(CredentialRecord("C" * 32, "scrypt$hash", ("full_api",), "ops"))
    await store.put_channel("app-1", ["b", "c"])
