"""The admin HTTP server (aiohttp), on the proxy's event loop: health now, metrics and stats later."""

from __future__ import annotations

from aiohttp import web

from .errors import StartupError
from .service import CacheService
from .settings import HostPort


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app(service: CacheService) -> web.Application:
    async def stats(_: web.Request) -> web.Response:
        """Counters since start and each upstream origin's breaker state (JSON)."""
        body = {**service.counters.snapshot(), "upstreams": service.upstream.breaker_states()}
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/stats", stats)
    return app


async def start_admin(listen: HostPort, service: CacheService) -> web.AppRunner:
    runner = web.AppRunner(make_app(service), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, listen.host, listen.port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {listen} (--admin-listen): {exc.strerror or exc}") from exc
    return runner
