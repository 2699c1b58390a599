"""The admin HTTP server (aiohttp), on the proxy's event loop: health now, metrics and stats later."""

from __future__ import annotations

from aiohttp import web

from .errors import StartupError
from .settings import HostPort


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    return app


async def start_admin(listen: HostPort) -> web.AppRunner:
    runner = web.AppRunner(make_app(), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, listen.host, listen.port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {listen} (--admin-listen): {exc.strerror or exc}") from exc
    return runner
