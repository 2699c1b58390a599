"""Start everything in one process on one event loop: mitmproxy (trimmed to what a forward proxy needs),
our addon, the upstream client and the admin server."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator

import prometheus_client
from mitmproxy import options
from mitmproxy.addons import block, core, next_layer, proxyauth, proxyserver, tlsconfig
from mitmproxy.master import Master
from mitmproxy.utils import asyncio_utils
from prometheus_client import CollectorRegistry

from . import __version__, body_gc, ca, h2_answers, http1_limits, mitm_tuning, response_times
from .addon import RuststashAddon
from .admin import Admin, start_admin
from .blobserver import BlobServer
from .egress import EgressPolicy
from .errors import StartupError, StoreError
from .metrics import Metrics
from .service import CacheService
from .settings import HostPort, Settings
from .store import Store
from .tasks import spawn
from .upstream import Upstream, UpstreamMap, make_ssl_context

logger = logging.getLogger(__name__)

# The mitmproxy addons a forward proxy needs, besides ours. mitm_tuning.mark_answered relies on what they
# do after `requestheaders` (tests/test_mitm_tuning.py checks it).
MITMPROXY_ADDONS = (
    core.Core,
    block.Block,
    proxyauth.ProxyAuth,
    proxyserver.Proxyserver,
    next_layer.NextLayer,
    tlsconfig.TlsConfig,
)


def check_port_free(listen: HostPort, flag: str) -> None:
    """Fail early with a clear message when a listen address is taken (mitmproxy only logs it)."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen.host, listen.port))
        except OSError as exc:
            what = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise StartupError(f"cannot listen on {listen} ({flag}): {what}") from exc


def mitmproxy_options(settings: Settings) -> dict[str, object]:
    opts: dict[str, object] = {
        "mode": ["regular"],
        "listen_host": settings.listen.host,
        "listen_port": settings.listen.port,
        "confdir": str(settings.data_dir),
        # lazy: a CONNECT to an unreachable upstream must not fail before our hook can serve from cache
        "connection_strategy": "lazy",
        "upstream_cert": False,
        "allow_hosts": [h.allow_pattern() for h in settings.cache_hosts],
        # Inside an intercepted tunnel it is always HTTP. With rawtcp on, mitmproxy guesses "raw TCP" from the
        # first bytes it decrypts (no newline yet in a long request line) and passes them straight upstream.
        "rawtcp": False,
        # PASS traffic on intercepted hosts is forwarded by mitmproxy: never hold a large body whole
        "stream_large_bodies": "1m",
    }
    if settings.access.proxy_auth is not None:
        opts["proxyauth"] = settings.access.proxy_auth
        # mitmproxy refuses clients from public addresses unless told otherwise: with authentication on,
        # a site proxy may take them.
        opts["block_global"] = False
    if settings.upstream_ca is not None:
        opts["ssl_verify_upstream_trusted_ca"] = str(ca.write_upstream_bundle(settings.data_dir, settings.upstream_ca))
    return opts


@contextlib.asynccontextmanager
async def running_service(settings: Settings, metrics: Metrics) -> AsyncIterator[tuple[CacheService, UpstreamMap]]:
    store = await asyncio.to_thread(Store, settings.cache_dir, settings.max_bytes, hot_bytes=settings.hot_bytes)
    upstream_map = UpstreamMap(settings.upstreams)
    known = upstream_map.known_origins(h.host for h in settings.cache_hosts)
    upstream = Upstream(
        upstream_map,
        make_ssl_context(settings.upstream_ca),
        f"ruststash/{__version__}",
        settings.resilience,
        metrics,
        known,
    )
    upstream.response_times.restore(await asyncio.to_thread(store.meta_items, response_times.META_PREFIX))
    await upstream.start()
    stop_filling = threading.Event()
    filling = spawn(fill_memory(store, stop_filling), "fill the memory cache")
    service = CacheService(store, upstream, settings.cache_hosts, settings.resilience, metrics)
    watching = spawn(service.loop_lag.watch(), "watch the event loop's lag")
    try:
        yield service, upstream_map
    finally:
        watching.cancel()
        stop_filling.set()
        await asyncio.wait([filling])  # it stops at its next body; the store must not close under it
        await upstream.close()
        try:
            kept = {**upstream.response_times.to_meta(), **store.memory_order_meta()}
            await asyncio.to_thread(store.put_meta, kept)
        except StoreError as exc:
            logger.warning("upstream answer times and the memory order not kept for the next start: %s", exc)
        await asyncio.to_thread(store.close)


async def fill_memory(store: Store, stop: threading.Event) -> None:
    """Read the bodies the last run used most into memory (Store.fill_memory), beside the serving."""
    began = time.monotonic()
    count, size = await asyncio.to_thread(store.fill_memory, stop)
    if count:
        logger.info(
            "memory cache: %d stored bodies (%.1f MiB) read from disk in %.1f s",
            count,
            size / 2**20,
            time.monotonic() - began,
        )


def egress_policy(settings: Settings, upstream_map: UpstreamMap, blobs: BlobServer) -> EgressPolicy:
    """Connections mitmproxy makes that are always fine: our loopback blob server and the origins of the
    cached hosts (PASS requests on them are forwarded there)."""
    allowed = {("127.0.0.1", blobs.port)}
    for host in settings.cache_hosts:
        for origin in upstream_map.origins("https", host.host, host.port or 443):
            allowed.add((origin.host, origin.port))
    return EgressPolicy(settings.access.tunnel_allow, settings.access.deny_private_tunnels, frozenset(allowed))


@contextlib.asynccontextmanager
async def serving_blobs() -> AsyncIterator[BlobServer]:
    blobs = BlobServer()
    await blobs.start()
    try:
        yield blobs
    finally:
        await blobs.close()


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM. Raises StartupError/ConfigError before serving if something is wrong."""
    files = ca.ensure_ca(settings.data_dir)
    ca.check_key_private(files)
    ca.write_client_bundle(settings.data_dir)
    check_port_free(settings.listen, "--listen")
    check_port_free(settings.admin_listen, "--admin-listen")

    http1_limits.install()
    mitm_tuning.install()
    h2_answers.install()
    prometheus_client.disable_created_metrics()  # `_created` series only clutter the dashboards
    known = UpstreamMap(settings.upstreams).known_origins(h.host for h in settings.cache_hosts)
    metrics = Metrics(CollectorRegistry(), upstreams=known)
    async with running_service(settings, metrics) as (service, upstream_map), serving_blobs() as blobs:
        master = Master(options.Options(), with_termlog=False)
        mitm_tuning.without_legacy_log_events(master)
        addon = RuststashAddon(
            service, upstream_map, blobs, egress_policy(settings, upstream_map, blobs), settings.http1_hosts
        )
        master.addons.add(*(mitm_addon() for mitm_addon in MITMPROXY_ADDONS), addon)
        master.options.update(**mitmproxy_options(settings))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, master.shutdown)
        with (
            asyncio_utils.install_exception_handler(master._asyncio_exception_handler),
            asyncio_utils.set_eager_task_factory(),
        ):
            ps = master.addons.get("proxyserver")
            if not await ps.setup_servers():
                raise StartupError(f"cannot listen on {settings.listen} (--listen)")
            admin = await start_admin(settings.admin_listen, Admin(service, metrics, settings.data_dir))
            h2_answers.register(addon.answer_without_flow)
            try:
                await master.running()
                body_gc.freeze_startup_objects()
                logger.info(
                    "ruststash %s: proxy on %s, admin on %s, cache %s",
                    __version__,
                    settings.listen,
                    settings.admin_listen,
                    settings.cache_dir,
                )
                await master.should_exit.wait()
            finally:
                h2_answers.register(None)
                await admin.cleanup()
                await master.done()
