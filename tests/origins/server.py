"""Run an aiohttp application over TLS on 127.0.0.1 in a background thread with its own event loop.

Tests and benchmarks are synchronous (they run real cargo and rustup as subprocesses), so each origin lives
on its own loop in a daemon thread. `stop()` closes the listening socket so clients see "connection
refused"; `start()` again binds the same port, so an origin can go away and come back during a test.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TypeVar

from aiohttp import web

T = TypeVar("T")


class BackgroundServer:
    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None, host: str = "127.0.0.1") -> None:
        self._app = app
        self._ssl_context = ssl_context
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="origin-loop", daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        """Run a coroutine on the origin's loop and wait for its result."""

        async def run() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout)

    def start(self) -> None:
        """Start listening (on the port used before, if this server ran already)."""
        if self._runner is not None:
            return

        async def start() -> None:
            runner = web.AppRunner(self._app, handle_signals=False, shutdown_timeout=0.5)
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl_context, reuse_address=True)
            await site.start()
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]
            self._runner = runner

        self.call(start)

    def stop(self) -> None:
        """Stop listening and drop open connections: clients now get "connection refused"."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self.call(lambda: _cleanup(runner))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


async def _cleanup(runner: web.AppRunner) -> None:
    """Shut the runner down, then abort every connection the origin's loop still holds: keep-alive and hung
    requests (a TLS transport's graceful close waits for the peer's close_notify, which a pooled client never
    sends) and connections still in their TLS handshake, which aiohttp does not know of yet. Left open, such a
    transport is closed by the garbage collector some tests later, which fails that test with a
    ResourceWarning."""
    await runner.cleanup()
    loop = asyncio.get_running_loop()
    for transport in _socket_transports(loop):
        transport.abort()
    # abort() closes the socket on the loop's next turn; let that run before the loop may be stopped.
    for _ in range(3):
        await asyncio.sleep(0)


def _socket_transports(loop: asyncio.AbstractEventLoop) -> list[asyncio.Transport]:
    """Every socket transport `loop` has made and not yet let go of (aborting a closed one does nothing); the
    origin's loop serves nothing else. asyncio's selector loops keep them by file descriptor: a private map,
    the same in Python 3.12 and 3.13, but there is no public way to reach a transport whose TLS handshake
    has not finished."""
    transports = getattr(loop, "_transports", None)
    if transports is None:
        raise RuntimeError(f"{type(loop).__name__} does not keep its transports where BackgroundServer looks")
    return list(transports.values())
