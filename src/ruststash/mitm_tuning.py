"""Per-request and per-chunk work in mitmproxy that costs CPU for nothing here, cut down.

- mitmproxy type-checks every field of every request and response it builds (`MessageData.__post_init__`,
  which exists only when Python runs without -O): about 6 % of the proxy's CPU on a warm cargo run. The
  values come from mitmproxy's own parsers and from our addon, whose types mypy checks. Other assertions
  stay: -O would drop those too, and they guard mitmproxy's state machines.
- mitmproxy reads its connections 64 KiB at a time and runs each read through its whole layer stack
  (HTTP, TLS, the tunnel). A large hit comes from our loopback blob server far faster than that: reading up
  to 1 MiB at a time (whatever is buffered) cut the proxy's CPU for a cached 110 MiB toolchain by about a
  third (docs/benchmarks.md).

Re-check both when mitmproxy is upgraded (it is pinned in constraints.txt).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mitmproxy import http
from mitmproxy.proxy import server

READ_SIZE = 1 << 20
_INSTALLED = "_ruststash_large_reads"


def install() -> None:
    if "__post_init__" in vars(http.MessageData):
        http.MessageData.__post_init__ = _unchecked  # type: ignore[method-assign]
    handler = server.ConnectionHandler
    if getattr(handler, _INSTALLED, False):
        return
    handle_connection = handler.handle_connection

    async def with_large_reads(self: server.ConnectionHandler, connection: Any) -> None:
        io = self.transports[connection]
        if isinstance(io.reader, asyncio.StreamReader):
            io.reader = _LargeReads(io.reader)  # type: ignore[assignment]
        await handle_connection(self, connection)

    handler.handle_connection = with_large_reads  # type: ignore[method-assign]
    setattr(handler, _INSTALLED, True)


def _unchecked(self: http.MessageData) -> None:
    pass


class _LargeReads:
    """A StreamReader whose `read(n)` may return up to READ_SIZE bytes at once (whatever is buffered)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def read(self, n: int = -1) -> bytes:
        return await self._reader.read(READ_SIZE if 0 < n < READ_SIZE else n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)
