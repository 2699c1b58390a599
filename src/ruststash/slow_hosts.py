"""Hosts whose upstream is known to be slow or not answering right now, so clients holding a copy stop
waiting for it.

A revalidation that runs past `--stale-after` is served from the cache and goes on in the background; one
that gets no answer at all (refused, reset, DNS or TLS failure) is served from the cache. Its host is then
marked slow: until a fetch to it answers within `--stale-after` again, a request for something
stored is served from the cache at once, and its refresh runs in the background, at most PROBES at a time
per host (the others are not refreshed this time). Without this, every request would wait `--stale-after`
again (cargo walks the index in rounds, so a hung upstream cost rounds x deadline), and hung refreshes would
take every pooled connection to that host; and after a refused connection every request of cargo's next
round would try its own (a whole round of requests answered the long way, each with a failed connect). On
a link that is slow but works (a satellite), the copies keep being refreshed a few at a time while clients
get them at once.

Pure bookkeeping: the caller says when a deadline passed and hands over the fetches in progress.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# Background refreshes in flight per slow host: enough to keep a slow link busy, few enough to leave most
# of the 16 pooled connections per host to misses.
PROBES = 4


class SlowHosts:
    def __init__(
        self, answered: Callable[[asyncio.Future[Any]], bool], deadline: float, clock: Callable[[], float]
    ) -> None:
        """`answered(fetch)`: whether a finished fetch got an answer from upstream. A host is back once a
        fetch to it answers within `deadline` seconds of its start (`clock` tells the time)."""
        self._answered = answered
        self._deadline = deadline
        self._clock = clock
        self._probes: dict[str, set[asyncio.Future[Any]]] = {}
        self._why: dict[str, str] = {}  # host -> what marked it ("is slow (...)", "is not answering (...)")

    def is_slow(self, host: str) -> bool:
        return host in self._probes

    def why(self, host: str) -> str:
        """What marked `host`, worded to follow "upstream": "is slow (...)" or "is not answering (...)"."""
        return self._why.get(host, "")

    def hosts(self) -> tuple[str, ...]:
        return tuple(sorted(self._probes))

    def needs_probe(self, host: str) -> bool:
        """Slow, with room for another background refresh."""
        return host in self._probes and len(self._probes[host]) < PROBES

    def watch(self, host: str, fetch: asyncio.Future[Any], started: float, why: str = "is slow") -> None:
        """`fetch` (to `host`, begun at `started`) missed its deadline or got no answer (`why` says which), or
        is a refresh of a slow host: the host is slow until a fetch like it answers in time."""
        if host not in self._probes:
            logger.warning("upstream for %s %s: serving stored copies without waiting until it answers", host, why)
            self._probes[host] = set()
            self._why[host] = why
        self._probes[host].add(fetch)
        fetch.add_done_callback(lambda done: self._settled(host, done, started))

    def _settled(self, host: str, fetch: asyncio.Future[Any], started: float) -> None:
        probes = self._probes.get(host)
        if probes is None:
            return
        probes.discard(fetch)
        if self._answered(fetch) and self._clock() - started <= self._deadline:
            del self._probes[host]
            del self._why[host]
            logger.warning("upstream for %s answers in time again: waiting for it as usual", host)
