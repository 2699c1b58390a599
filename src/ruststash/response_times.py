"""How long each upstream origin usually takes to answer, so that a client holding a stored copy is not
kept waiting the whole `--stale-after` by an origin that always answers in milliseconds and now does not.

An origin's answer time is the time from sending a request to having its response headers (a 304, a 200, a
404: any answer). With a stored copy, the wait for upstream is FACTOR times the slowest of the last SAMPLES
answers, at least FLOOR seconds and at most `--stale-after`: an origin on loopback or a LAN gets FLOOR, a
satellite link (seconds per answer) the full `--stale-after`, as before. Without any answer seen yet, it is
`--stale-after`. What was learned is kept in the store when the proxy stops, so a restarted proxy (a CI
sidecar on a kept cache) does not start from nothing.

Only the wait changes: once it passes, the copy is served STALE and the fetch goes on in the background
(see `slow_hosts`). Misses still wait `--miss-timeout`. Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections import deque

SAMPLES = 32
FACTOR = 4.0
# An origin that answers in milliseconds gets this long. 1 s was the first floor: with a warm cache and a hung
# loopback origin, that one wait was 0.8 s of a cargo run that takes 1.4 s unfaulted (docs/benchmarks.md).
# 0.25 s was tried next: with 8 cargo clients at once on two cores, the proxy's own load pushed 17-69 of
# 3984 revalidations of a working loopback origin past it (served STALE, the host then taken for slow);
# at 0.5 s none in three such runs. Since then `loop_lag` gives a request more time when the proxy's own loop
# ran late, and cargo's requests that need upstream skip mitmproxy's flows (h2_answers): at 0.25 s again, none
# of 11,952 revalidations in three such runs went STALE, and the hung run's one wait (cargo's config.json) is
# half what it was, now that the unfaulted warm run takes 1.0 s (docs/benchmarks.md). Four times the origin's
# slowest recent answer decides above 62.5 ms.
FLOOR = 0.25
# Store meta keys: this prefix and the origin (scheme://host:port).
META_PREFIX = "response-time:"
# A remembered time above this is not believed (a clock jump, a hand-edited store).
MOST_BELIEVABLE = 3600.0


class ResponseTimes:
    def __init__(self) -> None:
        self._recent: dict[str, deque[float]] = {}

    def record(self, origin: str, seconds: float) -> None:
        """An answer from `origin` took `seconds`."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        recent = self._recent.get(origin)
        if recent is None:
            recent = self._recent[origin] = deque(maxlen=SAMPLES)
        recent.append(seconds)

    def deadline(self, origin: str, cap: float) -> float:
        """How long to wait for `origin` while a stored copy could answer instead: at most `cap`."""
        recent = self._recent.get(origin)
        if not recent:
            return cap
        return min(cap, max(FLOOR, FACTOR * max(recent)))

    def to_meta(self) -> dict[str, str]:
        """What to remember across restarts: the slowest recent answer per origin."""
        return {f"{META_PREFIX}{origin}": f"{max(recent):.6f}" for origin, recent in self._recent.items() if recent}

    def restore(self, meta: dict[str, str]) -> None:
        """Take back what `to_meta` gave (as one sample per origin); anything unreadable is ignored."""
        for key, value in meta.items():
            if not key.startswith(META_PREFIX):
                continue
            try:
                seconds = float(value)
            except ValueError:
                continue
            if seconds <= MOST_BELIEVABLE:
                self.record(key[len(META_PREFIX) :], seconds)
