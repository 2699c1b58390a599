"""CacheService.answer_at_once: what memory answers in the `requestheaders` hook, with no hook or thread after
it, is exactly what `handle` would answer; everything else is left to `handle`. Real store; the upstream client
is never started, so a request that needs upstream cannot be answered by either without failing."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ruststash.metrics import Metrics
from ruststash.policy import CRATES_IO, Decision, classify
from ruststash.replies import ClientRequest, Outcome, Reply
from ruststash.service import CacheService
from ruststash.settings import CacheHost, Resilience
from ruststash.store import Store
from ruststash.upstream import Upstream, UpstreamMap

CRATE_PATH = "/crates/serde/serde-1.0.0.crate"
CRATE_BODY = b"crate bytes " * 100
INDEX_PATH = "/se/rd/serde"
INDEX_BODY = b'{"name":"serde","vers":"1.0.0","deps":[],"cksum":"00","features":{},"yanked":false}\n'
ETAG = '"serde-1"'


def request_for(host: str, path: str, headers: dict[str, str] | None = None) -> tuple[Decision, ClientRequest]:
    decision = classify("GET", host, path, (CRATES_IO,))
    return decision, ClientRequest("GET", "https", host, 443, path, headers or {})


def stored(store: Store, host: str, path: str, body: bytes, lifetime: float) -> None:
    decision, _ = request_for(host, path)
    assert decision.key, path
    store.put(
        decision.key,
        body,
        status=200,
        headers=(("content-type", "application/octet-stream"), ("etag", ETAG)),
        stored_at=time.time(),
        lifetime=lifetime,
    )


async def service_on(tmp_path: Path, hot_bytes: int) -> tuple[CacheService, Store]:
    store = Store(tmp_path / "cache", hot_bytes=hot_bytes)
    metrics = Metrics(CollectorRegistry())
    resilience = Resilience()
    upstream = Upstream(UpstreamMap({}), ssl.create_default_context(), "ruststash-test", resilience, metrics)
    hosts = (CacheHost("index.crates.io"), CacheHost("static.crates.io"))
    return CacheService(store, upstream, hosts, resilience, metrics), store


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[CacheService]:
    service, store = await service_on(tmp_path, 32 * 1024 * 1024)
    stored(store, "static.crates.io", CRATE_PATH, CRATE_BODY, lifetime=float("inf"))
    stored(store, "index.crates.io", INDEX_PATH, INDEX_BODY, lifetime=600)
    stored(store, "index.crates.io", "/3/f/foo", b"stale\n", lifetime=0)
    yield service
    store.close()


def assert_same(reply: Reply, other: Reply) -> None:
    assert (reply.status, reply.headers, reply.body, reply.outcome) == (
        other.status,
        other.headers,
        other.body,
        other.outcome,
    )


async def test_a_crate_and_a_fresh_index_file_held_in_memory_are_answered_as_handle_would(
    service: CacheService,
) -> None:
    for host, path, body in (("static.crates.io", CRATE_PATH, CRATE_BODY), ("index.crates.io", INDEX_PATH, INDEX_BODY)):
        decision, request = request_for(host, path)
        hits = service.store.memory_hits
        at_once = service.answer_at_once(decision, request)
        assert at_once is not None and at_once.body == body and at_once.outcome is Outcome.HIT
        assert service.store.memory_hits == hits + 1
        assert_same(at_once, await service.handle(decision, request))


async def test_validators_that_match_get_a_304_at_once(service: CacheService) -> None:
    decision, request = request_for("index.crates.io", INDEX_PATH, {"if-none-match": ETAG})
    at_once = service.answer_at_once(decision, request)
    assert at_once is not None and (at_once.status, at_once.body) == (304, b"")
    assert_same(at_once, await service.handle(decision, request))


async def test_what_needs_upstream_or_teaches_the_registry_is_left_to_handle(service: CacheService) -> None:
    hits = service.store.memory_hits
    for host, path in (
        ("index.crates.io", "/3/f/foo"),  # stored, not fresh: revalidated
        ("index.crates.io", "/ra/nd/rand"),  # not stored
        ("index.crates.io", "/config.json"),  # its answers also teach the registry's download host
    ):
        assert service.answer_at_once(*request_for(host, path)) is None, path
    assert service.store.memory_hits == hits, "a declined request counted as a hit from memory"
    service.registry_written()  # a publish went through: every index file is checked with upstream a while
    assert service.answer_at_once(*request_for("index.crates.io", INDEX_PATH)) is None
    assert service.answer_at_once(*request_for("static.crates.io", CRATE_PATH)) is not None  # immutable


async def test_nothing_is_answered_at_once_without_a_memory_cache(tmp_path: Path) -> None:
    service, store = await service_on(tmp_path, 0)  # --memory-cache 0
    stored(store, "static.crates.io", CRATE_PATH, CRATE_BODY, lifetime=float("inf"))
    try:
        assert service.answer_at_once(*request_for("static.crates.io", CRATE_PATH)) is None
    finally:
        store.close()
