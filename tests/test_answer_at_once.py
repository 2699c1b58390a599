"""CacheService.answer_at_once: what memory answers in the `requestheaders` hook, with no hook or thread after
it, is exactly what `handle` would answer; everything else is left to `handle`. Real store; the upstream client
is never started, so a request that needs upstream cannot be answered by either without failing."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ruststash.errors import UpstreamError
from ruststash.metrics import Metrics
from ruststash.policy import CRATES_IO, Decision, classify
from ruststash.replies import ClientRequest, Outcome, Reply
from ruststash.service import CacheService, Fetched
from ruststash.settings import CacheHost, Origin, Resilience
from ruststash.store import Store
from ruststash.upstream import Upstream, UpstreamMap, origin_of

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


async def service_on(tmp_path: Path, hot_bytes: int, mapping: UpstreamMap | None = None) -> tuple[CacheService, Store]:
    store = Store(tmp_path / "cache", hot_bytes=hot_bytes)
    metrics = Metrics(CollectorRegistry())
    resilience = Resilience()
    tls = ssl.create_default_context()
    upstream = Upstream(mapping or UpstreamMap({}), tls, "ruststash-test", resilience, metrics)
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


STALE_INDEX = ("index.crates.io", "/3/f/foo")


def mark_down(service: CacheService, host: str) -> None:
    """The origin's breaker opens as after that many failed requests."""
    breaker = service.upstream.breaker(origin_of(f"https://{host}/"))
    for _ in range(service.resilience.breaker_threshold):
        breaker.record_failure(time.monotonic())


async def test_a_stale_copy_is_answered_at_once_while_its_origin_is_marked_down(service: CacheService) -> None:
    await service.upstream.start()  # nothing is sent: a marked-down origin is not tried
    try:
        assert service.answer_at_once(*request_for(*STALE_INDEX)) is None  # not down: revalidated
        mark_down(service, "index.crates.io")
        at_once = service.answer_at_once(*request_for(*STALE_INDEX))
        assert at_once is not None and (at_once.outcome, at_once.body) == (Outcome.STALE, b"stale\n")
        assert "marked down after repeated failures" in at_once.note
        handled = await service.handle(*request_for(*STALE_INDEX))
        assert_same(at_once, handled)
        assert at_once.note == handled.note
        # validators that match: a 304, as `handle` gives it
        decision, request = request_for(*STALE_INDEX, {"if-none-match": ETAG})
        not_modified = service.answer_at_once(decision, request)
        assert not_modified is not None and (not_modified.status, not_modified.outcome) == (304, Outcome.STALE)
        assert_same(not_modified, await service.handle(decision, request))
        # due for a probe (half open): left to `handle`, which sends it
        service.upstream.breaker(origin_of("https://index.crates.io/")).open_until = 0.0
        assert service.answer_at_once(*request_for(*STALE_INDEX)) is None
    finally:
        await service.upstream.close()


async def test_a_stale_copy_of_a_slow_host_is_answered_at_once_and_refreshed_behind(service: CacheService) -> None:
    await service.upstream.start()
    hung: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    try:
        mark_down(service, "index.crates.io")  # so that no refresh is sent (see the test after the next)
        service.slow_hosts.watch("index.crates.io", hung, time.monotonic())
        decision, request = request_for(*STALE_INDEX)
        at_once = service.answer_at_once(decision, request)
        assert at_once is not None and at_once.outcome is Outcome.STALE
        assert "upstream is slow" in at_once.note
        assert not service._inflight.running(decision.key)  # marked down: no refresh that would meet the breaker
        handled = await service.handle(decision, request)
        assert_same(at_once, handled)
        assert at_once.note == handled.note
    finally:
        hung.cancel()
        await service.upstream.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_after_a_refused_connection_stale_copies_are_answered_at_once(tmp_path: Path) -> None:
    """A revalidation that got no answer at all (here: nothing listens) marks its host as not answering: the
    next request holding a stale copy is answered at once, its refresh started behind it, as for a slow host.
    (A breaker that would open after one failure is not what does it: its threshold is the default 3.)"""
    refused = (Origin("https", "127.0.0.1", closed_port(), ""),)
    service, store = await service_on(tmp_path, 32 * 1024 * 1024, UpstreamMap({"index.crates.io": refused}))
    stored(store, "index.crates.io", "/3/f/foo", b"stale\n", lifetime=0)
    stored(store, "index.crates.io", "/3/b/bar", b"stale too\n", lifetime=0)
    await service.upstream.start()
    try:
        assert service.answer_at_once(*request_for("index.crates.io", "/3/b/bar")) is None  # not known: asked
        first = await service.handle(*request_for(*STALE_INDEX))
        assert first.outcome is Outcome.STALE and "cannot connect" in first.note, first.note
        assert service.slow_hosts.is_slow("index.crates.io")
        decision, request = request_for("index.crates.io", "/3/b/bar")
        at_once = service.answer_at_once(decision, request)
        assert at_once is not None and (at_once.outcome, at_once.body) == (Outcome.STALE, b"stale too\n")
        assert "index.crates.io: upstream is not answering (" in at_once.note, at_once.note
        assert "cannot connect" in at_once.note
        assert service._inflight.running(decision.key)  # its refresh, started behind the answer
        for _ in range(500):  # it is refused too
            if not service._inflight.running(decision.key):
                break
            await asyncio.sleep(0.01)
        breaker = service.upstream.breaker(refused[0].base)
        assert breaker.failures == 2
        breaker.record_failure(time.monotonic())  # a third failure in a row opens the breaker
        assert service.upstream.is_marked_down("https://index.crates.io/3/f/foo")
        stored(store, "index.crates.io", "/3/b/baz", b"stale as well\n", lifetime=0)
        decision, request = request_for("index.crates.io", "/3/b/baz")
        marked = service.answer_at_once(decision, request)
        assert marked is not None and "upstream is not answering (" in marked.note
        assert not service._inflight.running(decision.key)  # no refresh while the breaker would refuse it
    finally:
        await service.upstream.close()
        store.close()


async def test_a_fetch_in_progress_is_joined_not_answered_at_once(service: CacheService) -> None:
    mark_down(service, "index.crates.io")
    decision, _ = request_for(*STALE_INDEX)
    release = asyncio.Event()

    async def fetching() -> Fetched:
        await release.wait()
        return Fetched(error=UpstreamError("index.crates.io: test", 502, "reset"))

    task, _, _ = service._inflight.join_or_start(decision.key, fetching)
    assert service.answer_at_once(*request_for(*STALE_INDEX)) is None  # `handle` joins that fetch
    release.set()
    await task


@pytest.mark.parametrize(
    ("host", "port", "cached"),
    [
        ("index.crates.io", 443, True),
        ("INDEX.Crates.IO", 8443, True),  # any case; a host named without a port: any port
        ("mirror.example", 8443, True),
        ("mirror.example", 9443, True),  # named twice, once per port
        ("mirror.example", 443, False),
        ("crates.io", 443, False),
        ("index.crates.io.evil", 443, False),
    ],
)
async def test_a_cached_host_is_its_name_in_any_case_on_its_port_or_any_port(
    tmp_path: Path, host: str, port: int, cached: bool
) -> None:
    store = Store(tmp_path / "cache")
    metrics = Metrics(CollectorRegistry())
    upstream = Upstream(UpstreamMap({}), ssl.create_default_context(), "ruststash-test", Resilience(), metrics)
    hosts = (CacheHost("index.crates.io"), CacheHost("mirror.example", 8443), CacheHost("mirror.example", 9443))
    service = CacheService(store, upstream, hosts, Resilience(), metrics)
    assert service.is_cached_host(host, port) is cached
    store.close()


async def test_if_modified_since_is_weighed_at_once_too(service: CacheService) -> None:
    path = "/crates/dated/dated-1.0.0.crate"
    decision, _ = request_for("static.crates.io", path)
    assert decision.key
    modified = "Mon, 07 Dec 2026 10:00:00 GMT"
    service.store.put(
        decision.key, b"dated", status=200, headers=(("last-modified", modified),), stored_at=time.time(), lifetime=1e9
    )
    for since, status in (("Mon, 07 Dec 2026 11:00:00 GMT", 304), ("Sun, 06 Dec 2026 10:00:00 GMT", 200)):
        decision, request = request_for("static.crates.io", path, {"if-modified-since": since})
        at_once = service.answer_at_once(decision, request)
        assert at_once is not None and at_once.status == status
        assert_same(at_once, await service.handle(decision, request))
