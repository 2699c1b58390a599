"""How late the proxy's event loop runs: whether the proxy itself, not upstream, is what is slow just now.

With many clients on few cores (eight cargo clients, each with a hundred requests in flight, on two cores) one
turn of the event loop can take hundreds of milliseconds. An upstream answer that came in time then waits in
its socket while the deadline for it runs out, and the proxy served its stored copy STALE and took a working
host for slow: 49-262 of 3984 revalidations in such runs (docs/benchmarks.md). So when the deadline of a
request holding a stored copy passes while the loop has been running late, the request waits a little longer
(`grace`) before it gives up on upstream.

`LoopLag` is fed by a task that sleeps INTERVAL at a time and notes how much later than asked it woke up.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

INTERVAL = 0.05
# How far back a late turn still counts.
WINDOW = 2.0
# A loop this late or later is busy enough that a deadline may have passed for its sake.
BUSY = 0.05


class LoopLag:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque()  # (when, how late)

    def record(self, late: float) -> None:
        now = self._clock()
        self._samples.append((now, late))
        while self._samples and self._samples[0][0] < now - WINDOW:
            self._samples.popleft()

    def recent(self) -> float:
        """The latest the loop ran in the last WINDOW seconds (0 when it kept time)."""
        now = self._clock()
        return max((late for when, late in self._samples if when >= now - WINDOW), default=0.0)

    async def watch(self, interval: float = INTERVAL) -> None:
        """Runs until cancelled."""
        while True:
            asked = time.monotonic()
            await asyncio.sleep(interval)
            self.record(max(0.0, time.monotonic() - asked - interval))


def grace(lag: float, deadline: float) -> float:
    """How much longer to wait for upstream once `deadline` has passed while the loop ran up to `lag` late:
    nothing while it kept time, else twice the lag, at most the deadline again."""
    return 0.0 if lag < BUSY else min(2 * lag, deadline)
