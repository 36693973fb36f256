"""``GET /metrics`` of a running daemon, parsed as Prometheus text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from .http import request

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """(sample name, sorted labels) -> value; also checks the text parses as Prometheus."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def scrape(port: int, auth: str | None = None) -> dict:
    """The samples of one scrape; ``auth`` as for ``request`` (none: a loopback scrape)."""
    status, headers, body = await request(port, "GET", "/metrics", auth=auth)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=")
    return samples(body.decode())
