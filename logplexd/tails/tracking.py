"""Every open tail session, so that the ``kill_tail_sessions`` rod can end them all."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio


class TailSessions:
    """Every open tail session, so that ``kill_tail_sessions`` can end them."""

    def __init__(self) -> None:
        self._open: set[_Tail] = set()
        self.started = 0
        self.killed = 0

    @property
    def active(self) -> int:
        return len(self._open)

    def track(self, body: AsyncIterator[bytes]) -> _Tail:
        tail = _Tail(body, self)
        self._open.add(tail)
        self.started += 1
        return tail

    def kill_all(self) -> int:
        tails = list(self._open)
        for tail in tails:
            tail.kill()
        self.killed += len(tails)
        return len(tails)

    def _forget(self, tail: _Tail) -> None:
        self._open.discard(tail)


class _Tail:
    """A tail's body that ends (cleanly, with the last chunk) when killed.

    Each wait for the next chunk runs in its own cancel scope: killing cancels that wait,
    never the writer, so the HTTP server finishes the chunked response properly.
    """

    def __init__(self, body: AsyncIterator[bytes], owner: TailSessions) -> None:
        self._body = body
        self._owner = owner
        self._killed = False
        self._scope: trio.CancelScope | None = None

    def __aiter__(self) -> _Tail:
        return self

    async def __anext__(self) -> bytes:
        if self._killed:
            raise StopAsyncIteration
        with trio.CancelScope() as scope:
            self._scope = scope
            try:
                return await self._body.__anext__()
            except StopAsyncIteration:
                self._owner._forget(self)
                raise
            finally:
                self._scope = None
        self._owner._forget(self)
        raise StopAsyncIteration

    def kill(self) -> None:
        self._killed = True
        self._owner._forget(self)
        if self._scope is not None:
            self._scope.cancel()

    async def aclose(self) -> None:
        self._owner._forget(self)
        aclose = getattr(self._body, "aclose", None)
        if aclose is not None:
            await aclose()
