"""Give the memory of answered bodies back soon.

Every flow mitmproxy finishes is left in reference cycles (flow, layers, connection state), so it is freed
only by Python's cyclic garbage collector, not when its last use ends; and a flow holds the whole body the
cache answered it with. The collector's full passes are rare (they wait until the long-lived heap has grown
by a quarter), so with cargo asking for hundreds of crates at once, finished flows piled up: 4 concurrent
cargo clients (the cargo workload of bench/compare.py) peaked at 360-420 MiB, most of it bodies already
sent. Here a full collection runs after every COLLECT_EVERY bytes of bodies answered from memory (bodies
streamed from disk, toolchain archives, are not held by their flows). The objects that exist when the proxy
has started are frozen out of the collector's passes (`gc.freeze`), so a pass walks only what was made
since: 8-53 ms (median 16) during that 4-client run, against about 65 ms over the whole heap. Peak RSS of
that run: 300 MiB instead of 360-420; one cargo client about 160-176 MiB instead of 182-189.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

COLLECT_EVERY = 16 * 1024 * 1024


def freeze_startup_objects() -> None:
    """Called once the proxy is set up: what exists now lives as long as the process."""
    gc.collect()
    gc.freeze()


class BodyCollector:
    def __init__(self, every: int = COLLECT_EVERY, collect: Callable[[], object] = gc.collect) -> None:
        self._every = every
        self._collect = collect
        self._since = 0
        self.collections = 0

    def answered(self, size: int) -> None:
        """A body of `size` bytes was handed to mitmproxy."""
        self._since += size
        if self._since >= self._every:
            self._since = 0
            self.collections += 1
            self._collect()
