"""Coalescing: concurrent requests for one key share one upstream fetch (one task), whoever started it."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

from . import tasks

# Set (by the upstream client) once upstream has answered with headers: from then on a request for
# something not stored waits for the body as long as it keeps coming, not only `miss_timeout`.
UPSTREAM_ANSWERED: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "upstream_answered", default=None
)


class Inflight[T]:
    def __init__(self) -> None:
        self._tasks: dict[str, tuple[asyncio.Task[T], asyncio.Event]] = {}

    def join_or_start(
        self, key: str, start: Callable[[], Coroutine[Any, Any, T]]
    ) -> tuple[asyncio.Task[T], asyncio.Event, bool]:
        """The task fetching `key` (started by `start()` if none is running), the event it sets once
        upstream has answered, and whether it was joined.

        The task runs to its end even if every waiter gives up (a late answer still refreshes the store)."""
        running = self._tasks.get(key)
        if running is not None and not running[0].done():
            return running[0], running[1], True
        answered = asyncio.Event()
        context = contextvars.copy_context()
        context.run(UPSTREAM_ANSWERED.set, answered)
        task = tasks.spawn(start(), name=f"fetch {key}", context=context)
        self._tasks[key] = (task, answered)
        task.add_done_callback(lambda done: self._forget(key, done))
        return task, answered, False

    def running(self, key: str) -> bool:
        """Whether a fetch of `key` is in progress (a request for it would join that fetch)."""
        running = self._tasks.get(key)
        return running is not None and not running[0].done()

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        running = self._tasks.get(key)
        if running is not None and running[0] is task:
            del self._tasks[key]

    def __len__(self) -> int:
        return len(self._tasks)
