"""Per-request and per-chunk work in mitmproxy that costs CPU for nothing here, cut down.

- mitmproxy type-checks every field of every request and response it builds (`MessageData.__post_init__`,
  which exists only when Python runs without -O): about 6 % of the proxy's CPU on a warm cargo run. The
  values come from mitmproxy's own parsers and from our addon, whose types mypy checks. Other assertions
  stay: -O would drop those too, and they guard mitmproxy's state machines.
- For every hook of every flow (requestheaders, request, response, ...) mitmproxy walks all addons looking
  for a method of that name, each call inside a context manager, and then does the same again for an
  `update` hook that none of our addons has: a walk over the chain for nothing, per hook. The callables
  per hook name are looked up once (again whenever an addon is added or removed), and `update` is only
  triggered if some addon has it. Errors in an addon are logged as mitmproxy logs them, and AddonHalt
  still stops the hook.
- mitmproxy reads its connections 64 KiB at a time and runs each read through its whole layer stack
  (HTTP, TLS, the tunnel). A large hit comes from our loopback blob server far faster than that: reading up
  to 1 MiB at a time (whatever is buffered) cut the proxy's CPU for a cached 110 MiB toolchain by about a
  third (docs/benchmarks.md).
- mitmproxy's TLS layer takes what OpenSSL encrypted out of its memory BIO 64 KiB at a time, and each
  piece goes down the layer stack as its own write: a 256 KiB chunk of a large hit became four or five
  writes. Taking up to TLS_OUT_SIZE at once makes it one: proxy CPU per MiB of a cached 200 MiB archive
  fetched with curl 4.7-4.9 -> 4.2 ms, 180 -> 225 MiB/s (docs/benchmarks.md).
- mitmproxy's Master puts a handler on the root logger that turns every log record into a deprecated
  `add_log` hook: the record formatted once more, a wake-up of the event loop through its self-pipe (a
  write and a read syscall) and a walk over the addons, per record. No addon here has `add_log`, and our
  access log writes a record per request: `without_legacy_log_events` takes that handler off.

Re-check both when mitmproxy is upgraded (it is pinned in constraints.txt).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks, http, log
from mitmproxy.master import Master
from mitmproxy.proxy import commands, layer, server
from mitmproxy.proxy.layers import tls
from OpenSSL import SSL

READ_SIZE = 1 << 20
TLS_OUT_SIZE = 1 << 20
_INSTALLED = "_ruststash_large_reads"
_LIFECYCLE_INSTALLED = "_ruststash_lifecycle"
_HOOK_CACHE = "_ruststash_hook_callables"

logger = logging.getLogger("mitmproxy.addonmanager")


def install() -> None:
    if "__post_init__" in vars(http.MessageData):
        http.MessageData.__post_init__ = _unchecked  # type: ignore[method-assign]
    _install_lifecycle()
    tls.TLSLayer.tls_interact = _tls_interact  # type: ignore[method-assign]
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


def without_legacy_log_events(master: Master) -> None:
    """Take off the root-logger handler through which `master` triggers the deprecated `add_log` hook."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, log.LegacyLogEvents) and handler.master is master:
            handler.uninstall()


def _tls_interact(self: tls.TLSLayer) -> layer.CommandGenerator[None]:
    """TLSLayer.tls_interact, taking up to TLS_OUT_SIZE bytes per write instead of 64 KiB."""
    assert self.tls is not None
    while True:
        try:
            data = self.tls.bio_read(TLS_OUT_SIZE)
        except SSL.WantReadError:
            return  # nothing more waiting to be sent
        yield commands.SendData(self.conn, data)


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


def _install_lifecycle() -> None:
    manager = addonmanager.AddonManager
    if getattr(manager, _LIFECYCLE_INSTALLED, False):
        return
    register, remove = manager.register, manager.remove

    def registering(self: addonmanager.AddonManager, addon: Any) -> Any:
        vars(self).pop(_HOOK_CACHE, None)
        return register(self, addon)  # type: ignore[no-untyped-call]

    def removing(self: addonmanager.AddonManager, addon: Any) -> None:
        vars(self).pop(_HOOK_CACHE, None)
        remove(self, addon)  # type: ignore[no-untyped-call]

    manager.register = registering  # type: ignore[method-assign]
    manager.remove = removing  # type: ignore[method-assign]
    manager.handle_lifecycle = _handle_lifecycle  # type: ignore[method-assign]
    setattr(manager, _LIFECYCLE_INSTALLED, True)


def hook_callables(manager: addonmanager.AddonManager, name: str) -> list[Callable[..., Any]]:
    """Every addon method (sub-addons included, in chain order) that handles the hook `name`."""
    cache: dict[str, list[Callable[..., Any]]] = vars(manager).setdefault(_HOOK_CACHE, {})
    found = cache.get(name)
    if found is None:
        found = cache[name] = [
            func
            for addon in addonmanager.traverse(manager.chain)  # type: ignore[no-untyped-call]
            if callable(func := getattr(addon, name, None))
        ]
    return found


async def _handle_lifecycle(self: addonmanager.AddonManager, event: hooks.Hook) -> None:
    """AddonManager.handle_lifecycle without the walks for nothing (see the module's docstring)."""
    args = event.args()
    await _trigger(self, event.name, args)
    if isinstance(args[0], flow.Flow) and hook_callables(self, "update"):
        update = hooks.UpdateHook([args[0]])
        await _trigger(self, update.name, update.args())


async def _trigger(manager: addonmanager.AddonManager, name: str, args: list[Any]) -> None:
    for func in hook_callables(manager, name):
        try:
            result = func(*args)
            if result is not None and inspect.isawaitable(result):
                await result
        except exceptions.AddonHalt:
            return
        except exceptions.OptionsError:
            raise
        except Exception as exc:
            logger.error(f"Addon error: {exc}", exc_info=True)
