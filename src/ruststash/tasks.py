"""Background tasks that keep a reference and a name, so they are neither garbage collected nor anonymous."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)
_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], name: str, context: contextvars.Context | None = None) -> asyncio.Task[Any]:
    task = asyncio.create_task(coro, name=name, context=context)  # noqa: TID251 - the one sanctioned place
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("background task %s failed: %r", task.get_name(), exc)
