"""CacheService: requests that want the same stored entry while it is being read from disk share that read and
its body (a crate too large for memory, asked for by several CI runners at once). Real store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ruststash.errors import StoreError
from ruststash.hot_bodies import MAX_BODY
from ruststash.service import CacheService
from ruststash.store import Store
from tests.test_answer_at_once import CRATE_PATH, request_for, service_on, stored

LARGE_CRATE = b"x" * (MAX_BODY + 1)  # not held in memory: read from disk on every hit


class GatedReads:
    """Store.lookup_with_body, counted, each call held until `release`."""

    def __init__(self, store: Store) -> None:
        self.read = store.lookup_with_body
        self.calls = 0
        self.gate = threading.Event()

    def __call__(self, key: str, max_body: int) -> object:
        self.calls += 1
        self.gate.wait(10)
        return self.read(key, max_body)


@dataclass
class Setup:
    service: CacheService
    store: Store
    key: str
    reads: GatedReads


@pytest.fixture
async def large_crate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Setup]:
    """A service whose store holds a crate too large for memory, its disk reads counted and held at a gate."""
    service, store = await service_on(tmp_path, 32 * 1024 * 1024)
    stored(store, "static.crates.io", CRATE_PATH, LARGE_CRATE, lifetime=float("inf"))
    decision, _ = request_for("static.crates.io", CRATE_PATH)
    reads = GatedReads(store)
    monkeypatch.setattr(store, "lookup_with_body", reads)
    yield Setup(service, store, decision.key, reads)
    store.close()


async def test_concurrent_reads_of_one_entry_share_one_read_and_one_body(large_crate: Setup) -> None:
    service, key, reads = large_crate.service, large_crate.key, large_crate.reads
    waiting = [asyncio.ensure_future(service._stored(key)) for _ in range(8)]
    await asyncio.sleep(0.1)
    reads.gate.set()
    results = await asyncio.gather(*waiting)

    assert reads.calls == 1
    assert all(body is results[0][1] for _, body in results) and results[0][1] == LARGE_CRATE
    entry, body = await service._stored(key)  # once it is done, the next read is a read of its own
    assert reads.calls == 2 and body == LARGE_CRATE and entry is not None


async def test_a_waiter_that_leaves_does_not_end_the_read_for_the_others_and_errors_reach_each(
    large_crate: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, key, reads = large_crate.service, large_crate.key, large_crate.reads
    leaving = asyncio.ensure_future(service._stored(key))
    staying = asyncio.ensure_future(service._stored(key))
    await asyncio.sleep(0.05)
    leaving.cancel()
    reads.gate.set()
    _, body = await staying
    assert body == LARGE_CRATE and reads.calls == 1

    def failing(key: str, max_body: int) -> object:
        raise StoreError("disk gone")

    monkeypatch.setattr(large_crate.store, "lookup_with_body", failing)
    outcomes = await asyncio.gather(*(service._stored(key) for _ in range(3)), return_exceptions=True)
    assert [type(o) for o in outcomes] == [StoreError] * 3
