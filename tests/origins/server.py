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
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


async def _cleanup(runner: web.AppRunner) -> None:
    """Shut the runner down, then abort connections a client still holds open (keep-alive, hung requests):
    a TLS transport's graceful close waits for the peer's close_notify, which a pooled client never sends."""
    server = runner.server
    transports = [h.transport for h in server.connections] if server is not None else []
    await runner.cleanup()
    for transport in transports:
        if transport is not None:
            transport.abort()
    await asyncio.sleep(0)
