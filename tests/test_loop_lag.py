"""loop_lag: a request holding a stored copy gives upstream a little longer when the proxy's own event loop has
been running late, and only then."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ruststash import loop_lag
from ruststash.loop_lag import LoopLag, grace
from ruststash.service import Fetched
from tests.test_answer_at_once import INDEX_PATH, request_for, service_on


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_recent_is_the_latest_turn_within_the_window() -> None:
    clock = Clock()
    lag = LoopLag(clock)
    assert lag.recent() == 0.0
    lag.record(0.3)
    clock.now += 1.0
    lag.record(0.01)
    assert lag.recent() == 0.3
    clock.now += loop_lag.WINDOW - 0.5  # the 0.3 s turn is now older than the window
    assert lag.recent() == 0.01
    clock.now += loop_lag.WINDOW
    assert lag.recent() == 0.0


def test_grace_is_nothing_for_a_loop_on_time_and_bounded_by_the_deadline() -> None:
    assert grace(0.0, 0.5) == 0.0
    assert grace(loop_lag.BUSY / 2, 0.5) == 0.0
    assert grace(0.1, 0.5) == pytest.approx(0.2)
    assert grace(2.0, 0.5) == 0.5


async def test_watch_sees_a_loop_held_up() -> None:
    lag = LoopLag()
    watching = asyncio.ensure_future(lag.watch(interval=0.01))
    try:
        await asyncio.sleep(0.05)
        assert lag.recent() < 0.1
        time.sleep(0.3)  # noqa: ASYNC251 - the loop held up, as a burst of work holds it
        await asyncio.sleep(0.05)
        assert lag.recent() >= 0.25
    finally:
        watching.cancel()


async def upstream_answering_after(seconds: float) -> Fetched:
    await asyncio.sleep(seconds)
    return Fetched()


@pytest.mark.parametrize(("late", "waited"), [(0.0, False), (0.2, True)], ids=["loop-on-time", "loop-late"])
async def test_a_deadline_passed_while_the_loop_ran_late_waits_once_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, late: float, waited: bool
) -> None:
    service, store = await service_on(tmp_path, 0)
    try:
        monkeypatch.setattr(service, "stale_deadline", lambda request: 0.1)
        if late:
            service.loop_lag.record(late)
        decision, request = request_for("index.crates.io", INDEX_PATH)

        fetched = await service.coalesced(decision, request, True, lambda: upstream_answering_after(0.15))

        assert (fetched is not None) is waited  # None: the copy is served STALE, the fetch goes on
    finally:
        await asyncio.sleep(0.2)  # let the fetch end
        store.close()
