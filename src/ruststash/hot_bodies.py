"""Small stored bodies kept in memory, most recently used first, within a byte budget.

A hit on a body held here is answered on the event loop: no worker thread, no SQLite query, no file read.
That is what several clients fetching the same crates and index files at once (CI runners behind one proxy)
gain most from. Pure bookkeeping: the Store decides what goes in and drops what it changes or removes.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Entry

MAX_BODY = 512 * 1024  # larger bodies are read from disk (and large ones streamed)


class HotBodies:
    """An LRU map from cache key to (entry, body), holding at most `budget` bytes of bodies."""

    def __init__(self, budget: int, max_body: int = MAX_BODY) -> None:
        self.budget = budget
        self.max_body = min(max_body, budget)
        self._items: OrderedDict[str, tuple[Entry, bytes]] = OrderedDict()
        self._bytes = 0
        self._filled: set[str] = set()  # put by a start-up fill, not used or replaced since (`rank_filled`)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes of bodies held."""
        return self._bytes

    def peek(self, key: str) -> tuple[Entry, bytes] | None:
        """Like `get`, without counting as a use."""
        return self._items.get(key)

    def get(self, key: str) -> tuple[Entry, bytes] | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self._filled.discard(key)
        return item

    def put(self, entry: Entry, body: bytes) -> None:
        """Keep `body` as the body of `entry.key` if it is small enough, dropping the least recently used."""
        self.discard(entry.key)
        if len(body) > self.max_body or len(body) != entry.size:
            return
        self._items[entry.key] = (entry, body)
        self._bytes += len(body)
        while self._bytes > self.budget:
            dropped_key, (_, dropped) = self._items.popitem(last=False)
            self._bytes -= len(dropped)
            self._filled.discard(dropped_key)

    def put_if_room(self, entry: Entry, body: bytes) -> bool:
        """Keep `body` as the least recently used item if it fits without dropping anything and `entry.key`
        is not held already (what clients asked for since ranks above what a start-up fill reads)."""
        size = len(body)
        if entry.key in self._items or size > self.max_body or size != entry.size or self._bytes + size > self.budget:
            return False
        self._items[entry.key] = (entry, body)
        self._items.move_to_end(entry.key, last=False)
        self._bytes += size
        self._filled.add(entry.key)
        return True

    def order(self) -> list[tuple[str, int]]:
        """(key, body size) of what is held, most recently used first."""
        return [(key, len(body)) for key, (_, body) in reversed(self._items.items())]

    def rank_filled(self, newest_first: Iterable[str]) -> None:
        """After a fill that read its bodies oldest first (each went in as the least recently used): rank
        those not used since among themselves by `newest_first`, the last of them least recently used."""
        for key in newest_first:
            if key in self._filled:
                self._items.move_to_end(key, last=False)
        self._filled.clear()

    def discard(self, key: str, digest: str | None = None) -> None:
        """Drop `key` (only if it holds the body `digest`, when given)."""
        item = self._items.get(key)
        if item is None or (digest is not None and item[0].digest != digest):
            return
        del self._items[key]
        self._bytes -= len(item[1])
        self._filled.discard(key)


def choose_for_memory[T](candidates: Iterable[tuple[T, int, float]], budget: int, max_body: int) -> list[T]:
    """Which stored entries a new process reads into memory, from (entry, size, last used) of each (the
    entry is anything that names it: a key, the entry itself): the most recently used of those up to
    `max_body`, newest first, as long as they fit in `budget` together. Streams: holds no more than fit,
    however many entries the store has."""
    kept: list[tuple[float, int, T, int]] = []  # a heap, least recently used first (ties: listing order)
    total = 0
    cutoff = -math.inf  # when the most recently used entry left out was used: older ones stay out too
    for order, (key, size, used) in enumerate(candidates):
        if size > max_body or used <= cutoff:
            continue
        heapq.heappush(kept, (used, order, key, size))
        total += size
        while total > budget:
            cutoff, _, _, dropped = heapq.heappop(kept)
            total -= dropped
    return [key for *_, key, _ in sorted(kept, reverse=True)]
