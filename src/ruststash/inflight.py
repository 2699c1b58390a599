"""Coalescing: concurrent requests for one key share one upstream fetch (one task), whoever started it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from . import tasks


class Inflight[T]:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[T]] = {}

    def join_or_start(self, key: str, start: Callable[[], Coroutine[Any, Any, T]]) -> tuple[asyncio.Task[T], bool]:
        """The task fetching `key`, started by `start()` if none is running; and whether it was joined.

        The task runs to its end even if every waiter gives up (a late answer still refreshes the store)."""
        task = self._tasks.get(key)
        if task is not None and not task.done():
            return task, True
        task = tasks.spawn(start(), name=f"fetch {key}")
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return task, False

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]

    def __len__(self) -> int:
        return len(self._tasks)
