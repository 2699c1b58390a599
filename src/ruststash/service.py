"""The cache service: carries out a policy Decision for one client request and says how it went.

It knows nothing of mitmproxy (the addon translates flows to ClientRequest and Reply back), so it can be
tested with a real store and real origins but no proxy in front. Cargo's and the generic rules live here;
rustup's (manifest pairs, streamed archives) in `rust_dist`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from . import policy, sparse_index
from .errors import IntegrityError, StoreError, UpstreamError
from .freshness import freshness_lifetime, is_fresh, not_modified, parse_cache_control
from .policy import CrateRef, Decision, Kind, Registry, Rule
from .replies import (
    STORED_HEADERS,
    VALIDATOR_HEADERS,
    ClientRequest,
    Outcome,
    Reply,
    error_reply,
    selected,
)
from .settings import CacheHost
from .store import Entry, Store
from .upstream import FORWARDED_REQUEST_HEADERS, Upstream, UpstreamResponse

logger = logging.getLogger(__name__)


def _merge_validators(stored: tuple[tuple[str, str], ...], fresh: UpstreamResponse) -> tuple[tuple[str, str], ...]:
    """A 304 updates the stored response's validators and caching headers (RFC 9111 §4.3.4)."""
    updates = dict(selected(fresh.headers, VALIDATOR_HEADERS))
    kept = tuple((k, v) for k, v in stored if k not in updates)
    return kept + tuple(updates.items())


def upstream_headers(request: ClientRequest) -> dict[str, str]:
    return {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}


class CacheService:
    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        cache_hosts: tuple[CacheHost, ...],
        clock: Callable[[], float] = time.time,
    ) -> None:
        from .rust_dist import RustDist  # rust_dist uses this module's helpers

        self.store = store
        self.upstream = upstream
        self.cache_hosts = cache_hosts
        self._clock = clock
        self._registries: dict[tuple[str, str], Registry] = {("index.crates.io", ""): policy.CRATES_IO}
        self._learned_configs: set[str] = set()
        self.rust = RustDist(self, clock)

    @property
    def registries(self) -> tuple[Registry, ...]:
        return tuple(self._registries.values())

    def is_cached_host(self, host: str, port: int) -> bool:
        return any(h.matches(host, port) for h in self.cache_hosts)

    def decide(self, request: ClientRequest) -> Decision:
        if not self.is_cached_host(request.host, request.port):
            return policy.PASS
        return policy.classify(request.method, request.host, request.path, self.registries)

    async def handle(self, decision: Decision, request: ClientRequest) -> Reply:
        try:
            match decision.kind:
                case Kind.CONFIG:
                    reply = await self.revalidating(decision, request)
                    await self._learn_registry(decision, request)
                    return reply
                case Kind.INDEX | Kind.DIST_FILE:
                    return await self.revalidating(decision, request)
                case Kind.CRATE:
                    assert decision.crate is not None and decision.rule is Rule.IMMUTABLE
                    return await self._crate(decision, decision.crate, request)
                case Kind.MANIFEST | Kind.MANIFEST_SHA256:
                    return await self.rust.manifest(decision, request)
                case Kind.ARCHIVE:
                    return await self.rust.archive(decision, request)
                case Kind.PASS:
                    raise ValueError("PASS requests are forwarded, not handled")
        except StoreError as exc:
            logger.error("store failure for %s: %s", decision.key, exc)
            return error_reply(503, f"cache store unavailable: {exc}")

    def lifetime(self, decision: Decision, cache_control: str | None) -> float:
        if decision.rule is Rule.IMMUTABLE:
            return math.inf
        return max(freshness_lifetime(cache_control), decision.min_lifetime)

    async def revalidating(self, decision: Decision, request: ClientRequest, force: bool = False) -> Reply:
        """Fresh: serve. Stale or absent: ask upstream (conditionally when we hold a copy). Upstream failing:
        serve what we hold, marked STALE, else a clear 502/504."""
        entry = await asyncio.to_thread(self.store.lookup, decision.key)
        now = self._clock()
        if entry is not None and not force and is_fresh(entry.stored_at, entry.lifetime, now):
            return await self.answer(entry, request, Outcome.HIT)
        headers = upstream_headers(request)
        if entry is not None:
            if entry.etag:
                headers["if-none-match"] = entry.etag
            if entry.last_modified:
                headers["if-modified-since"] = entry.last_modified
        try:
            response = await self.upstream.get(request.url, headers)
        except UpstreamError as exc:
            if entry is not None:
                return await self.answer(entry, request, Outcome.STALE, note=exc.reason)
            return error_reply(exc.status, exc.reason)
        if response.status == 304 and entry is not None:
            merged = _merge_validators(entry.headers, response)
            lifetime = self.lifetime(decision, dict(merged).get("cache-control"))
            entry = await asyncio.to_thread(self.store.refresh, entry, now, merged, lifetime)
            return await self.answer(entry, request, Outcome.REVALIDATED)
        if response.status == 200:
            return await self._store_and_answer(decision, request, response, now)
        if response.status >= 500 or response.status == 304:
            reason = f"{request.host}: upstream answered {response.status}"
            if entry is not None:
                return await self.answer(entry, request, Outcome.STALE, note=reason)
            return error_reply(502, reason)
        if response.status in (404, 410, 451) and entry is not None:
            await asyncio.to_thread(self.store.delete, decision.key)
        return Reply(response.status, selected(response.headers, STORED_HEADERS), response.body, Outcome.MISS)

    async def _store_and_answer(
        self, decision: Decision, request: ClientRequest, response: UpstreamResponse, now: float
    ) -> Reply:
        cache_control = parse_cache_control(response.header("cache-control"))
        headers = selected(response.headers, STORED_HEADERS)
        if cache_control.no_store or cache_control.private:
            note = "not stored: upstream said no-store/private"
            return Reply(200, headers, response.body, Outcome.MISS, note=note)
        lifetime = self.lifetime(decision, response.header("cache-control"))
        entry = await asyncio.to_thread(
            self.store.put,
            decision.key,
            response.body,
            status=200,
            headers=headers,
            stored_at=now,
            lifetime=lifetime,
        )
        return await self.answer(entry, request, Outcome.MISS, body=response.body)

    async def _crate(self, decision: Decision, crate: CrateRef, request: ClientRequest) -> Reply:
        """Immutable: a stored copy is always served. A new one is stored only if its sha256 is the `cksum`
        its registry's index publishes for that version."""
        entry = await asyncio.to_thread(self.store.lookup, decision.key)
        if entry is not None:
            return await self.answer(entry, request, Outcome.HIT)
        expected = await self._published_cksum(crate)
        try:
            response = await self.upstream.get(request.url, upstream_headers(request))
        except UpstreamError as exc:
            return error_reply(exc.status, exc.reason)
        headers = selected(response.headers, STORED_HEADERS)
        if response.status != 200:
            if response.status >= 500:
                return error_reply(502, f"{request.host}: upstream answered {response.status}")
            return Reply(response.status, headers, response.body, Outcome.MISS)
        if expected is None:
            note = f"not stored: the index does not list {crate.name} {crate.version}"
            logger.warning("%s %s: %s", crate.name, crate.version, note)
            return Reply(200, headers, response.body, Outcome.MISS, note=note)
        try:
            entry = await asyncio.to_thread(
                self.store.put,
                decision.key,
                response.body,
                status=200,
                headers=headers,
                stored_at=self._clock(),
                lifetime=math.inf,
                expected_digest=expected,
            )
        except IntegrityError as exc:
            reason = (
                f"{crate.name} {crate.version}: the download's sha256 {exc.actual} is not the registry's "
                f"cksum {exc.expected}; not stored"
            )
            logger.warning("integrity failure: %s", reason)
            return error_reply(502, reason)
        return await self.answer(entry, request, Outcome.MISS, body=response.body)

    async def _published_cksum(self, crate: CrateRef) -> str | None:
        """The cksum from the stored index file; if it does not list the version (or we hold none), the
        index file is refreshed from upstream once."""
        entry = await asyncio.to_thread(self.store.lookup, crate.index_key)
        if entry is not None:
            body = await asyncio.to_thread(self.store.read, entry)
            if cksum := sparse_index.published_cksum(body, crate.version):
                return cksum
        index_request = ClientRequest("GET", "https", crate.index_host, 443, crate.index_path, {"accept": "text/plain"})
        index_decision = Decision(Kind.INDEX, crate.index_key, Rule.REVALIDATE)
        reply = await self.revalidating(index_decision, index_request, force=entry is not None)
        if reply.status != 200:
            return None
        return sparse_index.published_cksum(reply.body, crate.version)

    async def _learn_registry(self, decision: Decision, request: ClientRequest) -> None:
        """A registry's config.json says where its crates download from: remember it so those downloads are
        recognised and checked against this registry's index."""
        entry = await asyncio.to_thread(self.store.lookup, decision.key)
        if entry is None or entry.digest in self._learned_configs:
            return
        self._learned_configs.add(entry.digest)
        prefix = policy.config_prefix(request.path)
        if prefix is None or (request.host.lower(), prefix) == ("index.crates.io", ""):
            return
        dl = sparse_index.config_dl(await asyncio.to_thread(self.store.read, entry))
        registry = policy.registry_from_dl(request.host.lower(), prefix, dl) if dl else None
        if registry is not None:
            self._registries[(registry.index_host, registry.index_prefix)] = registry

    async def answer(
        self, entry: Entry, request: ClientRequest, outcome: Outcome, body: bytes | None = None, note: str = ""
    ) -> Reply:
        if not_modified(request.headers, entry.etag, entry.last_modified):
            return Reply(304, selected(entry.headers, VALIDATOR_HEADERS), b"", outcome, note)
        if body is None:
            body = await asyncio.to_thread(self.store.read, entry)
        return Reply(entry.status, entry.headers, body, outcome, note)
