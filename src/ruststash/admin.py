"""The admin HTTP server (aiohttp), on the proxy's event loop: health, readiness, metrics and stats."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .ca import ca_files
from .errors import StartupError, StoreError
from .metrics import Metrics, StoreFigures
from .service import CacheService
from .settings import HostPort

# Below this much free space the proxy is not ready: it could not store what it fetches.
MIN_FREE_BYTES = 64 * 1024 * 1024


@dataclass
class Admin:
    service: CacheService
    metrics: Metrics
    data_dir: Path

    def __post_init__(self) -> None:
        self._breakers: dict[str, str] = {}
        self.metrics.add_scrape_time(self.store_figures, lambda: self._breakers)

    def store_figures(self) -> StoreFigures:
        store = self.service.store
        used, entries = store.usage()
        free = shutil.disk_usage(store.directory).free
        return StoreFigures(
            used,
            entries,
            store.max_bytes,
            free,
            store.evictions,
            store.full_since is not None,
            store.memory_bytes(),
            store.memory_hits,
        )

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _: web.Request) -> web.Response:
        checks = await asyncio.to_thread(self._readiness)
        ready = all(value == "ok" for value in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    def _readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            self.service.store.check()
            checks["store"] = "ok"
        except StoreError as exc:
            checks["store"] = str(exc)
        key = ca_files(self.data_dir).key_and_cert
        checks["ca"] = "ok" if key.is_file() else f"{key} is missing"
        free = shutil.disk_usage(self.service.store.directory).free
        checks["disk"] = "ok" if free >= MIN_FREE_BYTES else f"only {free} bytes free in the cache directory"
        return checks

    async def metrics_page(self, _: web.Request) -> web.Response:
        self._breakers = self.service.upstream.breaker_states()  # read on the loop that changes them
        body = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    async def stats(self, _: web.Request) -> web.Response:
        """Counters since start, the store's figures, each upstream origin's breaker state and the hosts
        currently known slow (JSON)."""
        figures = await asyncio.to_thread(self.store_figures)
        body = {
            **self.metrics.snapshot(),
            "store": {
                "bytes": figures.bytes,
                "entries": figures.entries,
                "max_bytes": figures.max_bytes,
                "free_bytes": figures.free_bytes,
                "evictions": figures.evictions,
                "disk_full": figures.disk_full,
                "memory_bytes": figures.memory_bytes,
                "memory_hits": figures.memory_hits,
            },
            "upstreams": self.service.upstream.breaker_states(),
            "slow_hosts": list(self.service.slow_hosts.hosts()),
        }
        return web.json_response(body)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/api/stats", self.stats)
        return app


async def start_admin(listen: HostPort, admin: Admin) -> web.AppRunner:
    runner = web.AppRunner(admin.app(), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, listen.host, listen.port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {listen} (--admin-listen): {exc.strerror or exc}") from exc
    return runner
