"""Hosts whose upstream is known to be slow right now, so clients holding a copy stop waiting for it.

A revalidation that runs past `--stale-after` is served from the cache and goes on in the background. Its
host is then marked slow: until a fetch to it ends with an answer again, a request for something stored is
served from the cache at once, and at most one background refresh (the probe) goes to that host at a time.
Without this, every request would wait `--stale-after` again (cargo walks the index in rounds, so a hung
upstream cost rounds x deadline), and hung refreshes would take every pooled connection to that host.

Pure bookkeeping: the caller says when a deadline passed and hands over the fetch in progress.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class SlowHosts:
    def __init__(self, answered: Callable[[asyncio.Future[Any]], bool]) -> None:
        """`answered(fetch)`: whether a finished fetch got an answer from upstream (the host is back)."""
        self._answered = answered
        self._probes: dict[str, asyncio.Future[Any] | None] = {}

    def is_slow(self, host: str) -> bool:
        return host in self._probes

    def hosts(self) -> tuple[str, ...]:
        return tuple(sorted(self._probes))

    def needs_probe(self, host: str) -> bool:
        """Slow, and no fetch to it is in progress that would tell us it is back."""
        return host in self._probes and self._probes[host] is None

    def watch(self, host: str, fetch: asyncio.Future[Any]) -> None:
        """`fetch` (to `host`) missed its deadline, or is the new probe of a slow host: the host is slow
        until a fetch like it ends with an answer."""
        if host not in self._probes:
            logger.warning("upstream for %s is slow: serving stored copies without waiting until it answers", host)
        self._probes[host] = fetch
        fetch.add_done_callback(lambda done: self._settled(host, done))

    def _settled(self, host: str, fetch: asyncio.Future[Any]) -> None:
        if host not in self._probes:
            return
        if self._answered(fetch):
            del self._probes[host]
            logger.warning("upstream for %s answers again: waiting for it as usual", host)
        elif self._probes[host] is fetch:
            self._probes[host] = None  # the probe failed: the next request starts another
