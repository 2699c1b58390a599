"""The cache service: carries out a policy Decision for one client request and says how it went.

It knows nothing of mitmproxy (the addon translates flows to ClientRequest and Reply back), so it can be
tested with a real store and real origins but no proxy in front. Cargo's and the generic rules live here;
rustup's (manifest pairs, streamed archives) in `rust_dist`.

Every upstream fetch runs as its own task, shared by all requests for the same key (coalescing). A request
waits for it only so long: with a stored copy `stale_after` seconds, or less for an origin that usually
answers much faster (then the copy is served, marked STALE, and the fetch refreshes the store when it
ends); without one `miss_timeout` seconds (then 504).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from . import loop_lag, policy, sparse_index
from .errors import BodyGone, DiskFull, IntegrityError, StoreError, UpstreamError
from .freshness import freshness_lifetime, is_fresh, not_modified, parse_cache_control
from .inflight import Inflight
from .metrics import Metrics
from .policy import CrateRef, Decision, Kind, Registry, Rule
from .replies import (
    NOT_STORED_FULL,
    STORED_HEADERS,
    VALIDATOR_HEADERS,
    ClientRequest,
    Fetched,
    Outcome,
    Reply,
    error_reply,
    selected,
)
from .settings import CacheHost, Resilience
from .slow_hosts import SlowHosts
from .store import Entry, Store
from .tasks import spawn
from .upstream import CREDENTIAL_HEADERS, FORWARDED_REQUEST_HEADERS, Upstream, UpstreamResponse

logger = logging.getLogger(__name__)

# Hits on bodies up to this size are read with their lookup, in one trip to a worker thread. (A stored crate
# is always served whole, so it is read with its lookup whatever its size: see `_crate`.) A larger stored
# DIST_FILE (rustup-init, about 20 MB) is sent from its file by the blob server, never held in memory; index
# files and manifests stay whole, as the proxy reads them itself too (a crate's cksum, `ruststash warm`).
INLINE_BODY = 1024 * 1024
# Upstream failures in which no answer came at all: a revalidation that meets one marks its host slow (see
# slow_hosts). Not a 5xx or a bad body (upstream answered; the breaker counts those), not `circuit_open`
# (`Upstream.marked_down` answers for that).
NO_ANSWER_CAUSES = frozenset({"connect", "dns", "tls", "timeout", "reset", "truncated"})
# Index files that upstream says do not exist are remembered briefly (a missing crate on a slow link).
NEGATIVE_STATUSES = (404, 410, 451)
# After a publish, yank or unyank through the proxy, index files are revalidated however fresh they are,
# for this long: cargo publish waits (60 s by default) for its new version to show in the index, and the
# site should see a yank at once. (Which crate it was is in the upload's body, which may be streamed.)
REGISTRY_WRITE_WINDOW = 120.0


def _merge_validators(stored: tuple[tuple[str, str], ...], fresh: UpstreamResponse) -> tuple[tuple[str, str], ...]:
    """A 304 updates the stored response's validators and caching headers (RFC 9111 §4.3.4)."""
    updates = dict(selected(fresh.headers, VALIDATOR_HEADERS))
    kept = tuple((k, v) for k, v in stored if k not in updates)
    return kept + tuple(updates.items())


def _body_problem(kind: Kind, body: bytes) -> str | None:
    match kind:
        case Kind.INDEX:
            return sparse_index.index_file_problem(body)
        case Kind.CONFIG:
            return sparse_index.config_problem(body)
        case _:
            return None


def _answered(fetch: asyncio.Future[Any]) -> bool:
    """Whether a finished fetch heard back from upstream (a 304, a body, a 404: anything but a failure)."""
    if fetch.cancelled() or fetch.exception() is not None:
        return False
    fetched = fetch.result()
    return isinstance(fetched, Fetched) and fetched.error is None


def credential_scope(headers: dict[str, str]) -> str:
    """A digest of the request's credentials ("" without any): entries are keyed by it."""
    credentials = [headers[name] for name in CREDENTIAL_HEADERS if name in headers]
    if not credentials:
        return ""
    return hashlib.sha256("\0".join(credentials).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def upstream_headers(request: ClientRequest) -> dict[str, str]:
    return {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}


class CacheService:
    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        cache_hosts: tuple[CacheHost, ...],
        resilience: Resilience,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from .rust_dist import RustDist  # rust_dist uses this module's helpers

        self.store = store
        self.upstream = upstream
        # host -> the ports it is cached on (None: any), for `is_cached_host`, asked on every request
        self._cached_ports: dict[str, set[int | None]] = {}
        for cached in cache_hosts:
            self._cached_ports.setdefault(cached.host, set()).add(cached.port)
        self.resilience = resilience
        self.metrics = metrics
        self._clock = clock
        self._registries: dict[tuple[str, str], Registry] = {("index.crates.io", ""): policy.CRATES_IO}
        self._learned_configs: set[str] = set()
        self._inflight: Inflight[Fetched] = Inflight()
        # Reads from disk in progress, by (key, max_body): see _read.
        self._reads: dict[tuple[str, int], asyncio.Future[tuple[Entry | None, bytes | None]]] = {}
        self.slow_hosts = SlowHosts(_answered, resilience.stale_after, time.monotonic)
        self.loop_lag = loop_lag.LoopLag()  # fed by `serve` (LoopLag.watch); never late without it
        self.rust = RustDist(self, clock)
        self._registry_written_at = -math.inf  # time.monotonic() of the last publish/yank seen

    def registry_written(self) -> None:
        """A publish, yank or unyank went through: see REGISTRY_WRITE_WINDOW."""
        self._registry_written_at = time.monotonic()

    def _forced(self, decision: Decision) -> bool:
        """Checked with upstream however fresh: index files, for a while after a publish (REGISTRY_WRITE_WINDOW)."""
        return decision.kind is Kind.INDEX and time.monotonic() - self._registry_written_at < REGISTRY_WRITE_WINDOW

    @property
    def registries(self) -> tuple[Registry, ...]:
        return tuple(self._registries.values())

    def is_cached_host(self, host: str, port: int) -> bool:
        """Whether `host` (any case) is one of `cache_hosts` on `port` (a CacheHost without a port: any)."""
        ports = self._cached_ports.get(host.lower())
        return ports is not None and (None in ports or port in ports)

    def decide(self, request: ClientRequest) -> Decision:
        if not self.is_cached_host(request.host, request.port) or policy.carries_body(request.headers):
            return policy.PASS
        decision = policy.classify(request.method, request.host, request.path, self.registries)
        return policy.scoped(decision, credential_scope(request.headers))

    async def handle(self, decision: Decision, request: ClientRequest) -> Reply:
        try:
            try:
                return await self._carry_out(decision, request)
            except BodyGone as exc:
                # A purge (another process) or an eviction took the body between lookup and read: asked
                # again, the lookup finds it gone and fetches it anew.
                logger.info("%s; asking again", exc)
                return await self._carry_out(decision, request)
        except StoreError as exc:
            logger.error("store failure for %s: %s", decision.key, exc)
            return error_reply(503, f"cache store unavailable: {exc}")

    async def _carry_out(self, decision: Decision, request: ClientRequest) -> Reply:
        match decision.kind:
            case Kind.CONFIG:
                reply = await self.revalidating(decision, request)
                await self._learn_registry(decision, request)
                return reply
            case Kind.INDEX:
                return await self.revalidating(decision, request, force=self._forced(decision))
            case Kind.DIST_FILE:
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

    def lifetime(self, decision: Decision, cache_control: str | None) -> float:
        if decision.rule is Rule.IMMUTABLE:
            return math.inf
        return max(freshness_lifetime(cache_control), decision.min_lifetime)

    async def coalesced(
        self,
        decision: Decision,
        request: ClientRequest,
        have_copy: bool,
        start: Callable[[], Coroutine[Any, Any, Fetched]],
    ) -> Fetched | None:
        """Join or start the fetch for `decision.key` and wait for it within the deadline that applies.
        None means the deadline passed (the fetch goes on in the background). With a copy stored and the
        host known slow (see SlowHosts), an error at once: the caller serves the copy.

        With a stored copy the whole fetch must finish within `stale_deadline`. Without one, upstream must
        start answering within `miss_timeout`; after that the body may take as long as it keeps coming
        (a stalled body fails after `read_timeout`), so a large crate on a slow link is not cut off."""
        if have_copy and (slow := self._slow_host(decision, request, start)) is not None:
            return Fetched(error=slow)
        began = time.monotonic()
        task, answered, joined = self._inflight.join_or_start(decision.key, start)
        if joined:
            self.metrics.coalesced_request(decision.kind.value)
        if have_copy:
            deadline = self.stale_deadline(request)
            with contextlib.suppress(TimeoutError):
                return self._heard(request, task, began, await asyncio.wait_for(asyncio.shield(task), deadline))
            if (grace := loop_lag.grace(self.loop_lag.recent(), deadline)) > 0:  # the proxy ran late: once more
                with contextlib.suppress(TimeoutError):
                    return self._heard(request, task, began, await asyncio.wait_for(asyncio.shield(task), grace))
            self.metrics.background_refresh(decision.kind.value)
            self.slow_hosts.watch(request.host, task, began, f"is slow (a request ran past {deadline:g}s)")
            return None
        waiter = asyncio.ensure_future(answered.wait())
        try:
            done, _ = await asyncio.wait(
                {task, waiter}, timeout=self.resilience.miss_timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            waiter.cancel()
        if not done:
            return None
        return await asyncio.shield(task)

    def _heard(self, request: ClientRequest, task: asyncio.Future[Any], began: float, fetched: Fetched) -> Fetched:
        """`fetched`, the result of `task` for a request holding a copy; when upstream did not answer at all,
        the host is marked slow (see slow_hosts): the next requests holding copies are answered at once."""
        if fetched.error is not None and fetched.error.cause in NO_ANSWER_CAUSES:
            self.slow_hosts.watch(request.host, task, began, f"is not answering ({fetched.error.reason})")
        return fetched

    def _slow_host(
        self, decision: Decision, request: ClientRequest, start: Callable[[], Coroutine[Any, Any, Fetched]]
    ) -> UpstreamError | None:
        """With a copy stored and its host known slow (see SlowHosts): the error the copy is served on at once,
        after its refresh is started in the background if there is room. None: the host is not slow."""
        if not self.slow_hosts.is_slow(request.host):
            return None
        # No refresh while its origins are marked down: it would only meet the breaker (after refused
        # connections, the breaker opens while the host is marked here).
        if self.slow_hosts.needs_probe(request.host) and not self.upstream.is_marked_down(request.url):
            task, _, _ = self._inflight.join_or_start(decision.key, start)
            self.slow_hosts.watch(request.host, task, time.monotonic())
            self.metrics.background_refresh(decision.kind.value)
        reason = f"{request.host}: upstream {self.slow_hosts.why(request.host)}; not waiting for it"
        return UpstreamError(reason, 504, "slow")

    async def _stored(
        self, key: str, max_body: int = INLINE_BODY, answered: bool = True
    ) -> tuple[Entry | None, bytes | None]:
        """The stored entry for `key` and, up to `max_body`, its body: from memory when held there (no thread
        hop), else from the store in a worker thread. `answered`: see `Store.lookup_hot`."""
        held = self._held(key, answered)
        if held is None:
            return await self._read(key, max_body)
        return held

    async def _read(self, key: str, max_body: int) -> tuple[Entry | None, bytes | None]:
        """`Store.lookup_with_body` in a worker thread, shared by the requests that want the same entry while
        it runs: eight CI runners asking for a 3 MB crate (too large to be held in memory) at once get one read
        and one body between them, not eight."""
        read = self._reads.get((key, max_body))
        if read is None:
            read = asyncio.ensure_future(asyncio.to_thread(self.store.lookup_with_body, key, max_body))
            self._reads[(key, max_body)] = read
            read.add_done_callback(lambda done: self._read_done((key, max_body), done))
        return await asyncio.shield(read)

    def _read_done(self, read_key: tuple[str, int], done: asyncio.Future[Any]) -> None:
        self._reads.pop(read_key, None)
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone (their clients left), each gets it raised

    def _held(self, key: str, answered: bool = True) -> tuple[Entry, bytes] | None:
        """The entry for `key` and its body if memory holds them (see `Store.lookup_hot`)."""
        held = self.store.lookup_hot(key, answered)
        if held is not None and self.store.claim_access_flush(self._clock()):
            spawn(asyncio.to_thread(self.store.flush_access_times), "flush access times")
        return held

    def answer_at_once(self, decision: Decision, request: ClientRequest) -> Reply | None:
        """The reply, if memory holds it and nothing needs asking first: a stored crate, or an index file or
        dist file that is fresh, or stale while upstream cannot be asked (`_unaskable`). None: `handle` the
        request. (Not config.json, whose answers also teach the registry's download host, nor manifests and
        archives, which rust_dist answers.) The same reply `handle` gives."""
        outcome, note = Outcome.HIT, ""
        if decision.kind in (Kind.INDEX, Kind.DIST_FILE):
            if self._forced(decision):
                return None
            entry = self.store.peek_hot(decision.key)
            if entry is None:
                return None
            if not is_fresh(entry.stored_at, entry.lifetime, self._clock()):
                unaskable = self._unaskable(decision, request, entry)
                if unaskable is None:
                    return None
                outcome, note = Outcome.STALE, unaskable.reason
        elif decision.kind is not Kind.CRATE:
            return None
        held = self._held(decision.key)
        if held is None:
            return None
        entry, body = held
        return _not_modified_reply(entry, request, outcome, note) or Reply(
            entry.status, entry.headers, body, outcome, note
        )

    def _unaskable(self, decision: Decision, request: ClientRequest, entry: Entry) -> UpstreamError | None:
        """Why a stale copy in hand is served without waiting for upstream, as `revalidating` would serve it:
        its host is known slow (its refresh is then started in the background if there is room), or every
        origin of it is marked down. None: ask upstream (also when a fetch of it is already in progress, which
        `handle` would join)."""
        if self._inflight.running(decision.key):
            return None
        slow = self._slow_host(decision, request, lambda: self._refetch(decision, request, entry))
        return slow if slow is not None else self.upstream.marked_down(request.url)

    def stale_deadline(self, request: ClientRequest) -> float:
        """How long a request holding a stored copy waits for upstream: `--stale-after`, or less for an
        origin known to answer much faster (see response_times)."""
        return self.upstream.answer_deadline(request.scheme, request.host, request.port, self.resilience.stale_after)

    def too_slow(self, request: ClientRequest, have_copy: bool) -> str:
        deadline = self.stale_deadline(request) if have_copy else self.resilience.miss_timeout
        return f"{request.host}: no answer from upstream within {deadline:g}s"

    async def revalidating(self, decision: Decision, request: ClientRequest, force: bool = False) -> Reply:
        """Fresh: serve. Stale or absent: ask upstream (conditionally when we hold a copy). Upstream failing
        or too slow: serve what we hold, marked STALE, else a clear 502/504."""
        entry, body = await self._stored(decision.key)
        stream = decision.kind is Kind.DIST_FILE
        if entry is not None and not force and is_fresh(entry.stored_at, entry.lifetime, self._clock()):
            return await self.answer(entry, request, Outcome.HIT, body=body, stream_large=stream)
        fetched = await self.coalesced(
            decision, request, entry is not None, lambda: self._refetch(decision, request, entry)
        )
        if fetched is None:
            reason = self.too_slow(request, entry is not None) + "; refreshing in the background"
            if entry is not None:
                return await self.answer(entry, request, Outcome.STALE, note=reason, stream_large=stream)
            return error_reply(504, self.too_slow(request, False))
        if fetched.error is not None:
            current = entry or await asyncio.to_thread(self.store.lookup, decision.key)
            if current is not None:
                return await self.answer(
                    current, request, Outcome.STALE, note=fetched.error.reason, stream_large=stream
                )
            return error_reply(fetched.error.status, fetched.error.reason)
        if fetched.reply is not None:
            return fetched.reply
        assert fetched.entry is not None
        known = fetched.body
        if known is None and entry is not None and fetched.entry.digest == entry.digest:
            known = body  # a 304: the body read with the lookup is still the one
        return await self.answer(fetched.entry, request, fetched.outcome, body=known, stream_large=stream)

    async def _refetch(self, decision: Decision, request: ClientRequest, entry: Entry | None) -> Fetched:
        """One conditional fetch and what it does to the store. Runs as a shared task; never raises."""
        headers = upstream_headers(request)
        if entry is not None:
            if entry.etag:
                headers["if-none-match"] = entry.etag
            if entry.last_modified:
                headers["if-modified-since"] = entry.last_modified
        try:
            response = await self.upstream.get(request.url, headers)
        except UpstreamError as exc:
            return Fetched(error=exc)
        now = self._clock()
        if response.status == 304 and entry is not None:
            merged = _merge_validators(entry.headers, response)
            lifetime = self.lifetime(decision, dict(merged).get("cache-control"))
            if lifetime <= 0 and entry.lifetime == lifetime and dict(merged) == dict(entry.headers):
                # Nothing to record: a copy that is never fresh gains nothing from a new stored time, and
                # this spares a database write on every revalidation (index files at max-age=0).
                return Fetched(replace(entry, stored_at=now), Outcome.REVALIDATED)
            refreshed = await asyncio.to_thread(self.store.refresh, entry, now, merged, lifetime)
            return Fetched(refreshed, Outcome.REVALIDATED)
        headers_kept = selected(response.headers, STORED_HEADERS)
        if response.status >= 500 or response.status == 304:
            return Fetched(
                error=UpstreamError(f"{request.host}: upstream answered {response.status}", 502, "status_5xx")
            )
        cache_control = parse_cache_control(response.header("cache-control"))
        if cache_control.no_store or cache_control.private:
            note = "not stored: upstream said no-store/private"
            return Fetched(reply=Reply(response.status, headers_kept, response.body, Outcome.MISS, note=note))
        if response.status == 200:
            if problem := _body_problem(decision.kind, response.body):
                reason = f"{request.host}{request.path}: upstream sent a body that is {problem}; not stored"
                return Fetched(error=UpstreamError(reason, 502, "invalid"))
            lifetime = self.lifetime(decision, response.header("cache-control"))
        elif response.status in NEGATIVE_STATUSES and decision.kind is Kind.INDEX and self.resilience.negative_ttl:
            lifetime = self.resilience.negative_ttl
        else:
            if response.status in NEGATIVE_STATUSES and entry is not None:
                await asyncio.to_thread(self.store.delete, decision.key)
            return Fetched(reply=Reply(response.status, headers_kept, response.body, Outcome.MISS))
        try:
            stored = await asyncio.to_thread(
                self.store.put,
                decision.key,
                response.body,
                status=response.status,
                headers=headers_kept,
                stored_at=now,
                lifetime=lifetime,
            )
        except DiskFull:
            return Fetched(reply=Reply(response.status, headers_kept, response.body, Outcome.MISS, NOT_STORED_FULL))
        return Fetched(stored, Outcome.MISS, body=response.body)

    async def _crate(self, decision: Decision, crate: CrateRef, request: ClientRequest) -> Reply:
        """Immutable: a stored copy is always served. A new one is stored only if its sha256 is the `cksum`
        its registry's index publishes for that version; a mirror serving anything else is passed over.
        A stored crate is read with its lookup whatever its size: read later, a purge in between could take it
        away."""
        entry, body = await self._stored(decision.key, max_body=sys.maxsize)
        if entry is not None:
            return await self.answer(entry, request, Outcome.HIT, body=body)
        fetched = await self.coalesced(decision, request, False, lambda: self._fetch_crate(decision, crate, request))
        if fetched is None:
            return error_reply(504, self.too_slow(request, False))
        if fetched.error is not None:
            return error_reply(fetched.error.status, fetched.error.reason)
        if fetched.reply is not None:
            return fetched.reply
        assert fetched.entry is not None
        return await self.answer(fetched.entry, request, Outcome.MISS, body=fetched.body)

    async def _fetch_crate(self, decision: Decision, crate: CrateRef, request: ClientRequest) -> Fetched:
        expected = await self._published_cksum(crate, request)

        def matches_cksum(response: UpstreamResponse) -> str | None:
            if expected is None or response.status != 200:
                return None
            actual = hashlib.sha256(response.body).hexdigest()
            return None if actual == expected else f"{crate.name} {crate.version}: sha256 {actual} is not the cksum"

        try:
            response = await self.upstream.get(request.url, upstream_headers(request), validate=matches_cksum)
        except UpstreamError as exc:
            return Fetched(error=exc)
        headers = selected(response.headers, STORED_HEADERS)
        if response.status != 200:
            if response.status >= 500:
                error = UpstreamError(f"{request.host}: upstream answered {response.status}", 502, "status_5xx")
                return Fetched(error=error)
            return Fetched(reply=Reply(response.status, headers, response.body, Outcome.MISS))
        if expected is None:
            note = f"not stored: the index does not list {crate.name} {crate.version}"
            logger.warning("%s %s: %s", crate.name, crate.version, note)
            return Fetched(reply=Reply(200, headers, response.body, Outcome.MISS, note=note))
        try:
            stored = await asyncio.to_thread(
                self.store.put,
                decision.key,
                response.body,
                status=200,
                headers=headers,
                stored_at=self._clock(),
                lifetime=math.inf,
                expected_digest=expected,
            )
        except DiskFull:
            if hashlib.sha256(response.body).hexdigest() == expected:
                return Fetched(reply=Reply(200, headers, response.body, Outcome.MISS, NOT_STORED_FULL))
            self.metrics.integrity_failure(Kind.CRATE.value)
            reason = f"{crate.name} {crate.version}: the download does not match the registry's cksum {expected}"
            return Fetched(reply=error_reply(502, reason))
        except IntegrityError as exc:
            self.metrics.integrity_failure(Kind.CRATE.value)
            reason = (
                f"{crate.name} {crate.version}: the download's sha256 {exc.actual} is not the registry's "
                f"cksum {exc.expected}; not stored"
            )
            logger.warning("integrity failure: %s", reason)
            return Fetched(reply=error_reply(502, reason))
        return Fetched(stored, Outcome.MISS, body=response.body)

    async def _published_cksum(self, crate: CrateRef, request: ClientRequest) -> str | None:
        """The cksum from the stored index file; if it does not list the version (or we hold none), the
        index file is refreshed from upstream once. The index file is usually in memory (cargo has just asked
        for it): then no worker thread is involved."""
        entry, body = await self._stored(crate.index_key, max_body=sys.maxsize, answered=False)
        cksum = None
        if entry is not None and entry.status == 200 and body is not None:
            cksum = sparse_index.published_cksum(body, crate.version)
        if cksum:
            return cksum
        headers = {"accept": "text/plain"} | {k: v for k, v in request.headers.items() if k in CREDENTIAL_HEADERS}
        index_request = ClientRequest("GET", "https", crate.index_host, 443, crate.index_path, headers)
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
        self,
        entry: Entry,
        request: ClientRequest,
        outcome: Outcome,
        body: bytes | None = None,
        note: str = "",
        stream_large: bool = False,
    ) -> Reply:
        """The reply for a stored entry. `body`: the entry's body if already read. `stream_large`: an unread
        body above INLINE_BODY is sent from its file (the reply holds it open), not read into memory."""
        if (unchanged := _not_modified_reply(entry, request, outcome, note)) is not None:
            return unchanged
        if body is None and stream_large and entry.size > INLINE_BODY:
            blob = await asyncio.to_thread(self.store.open_blob, entry)
            if blob is None:
                raise BodyGone(f"the body of {entry.key} was removed while it was being answered")
            return Reply(entry.status, entry.headers, b"", outcome, note, file=blob, size=entry.size)
        if body is None:
            body = await asyncio.to_thread(self.store.read, entry)
        return Reply(entry.status, entry.headers, body, outcome, note)


def _not_modified_reply(entry: Entry, request: ClientRequest, outcome: Outcome, note: str = "") -> Reply | None:
    """A 304 if the request's validators match the stored entry, else None."""
    if "if-none-match" not in request.headers and "if-modified-since" not in request.headers:
        return None  # (most requests: the entry's validators are not looked up)
    if entry.status == 200 and not_modified(request.headers, entry.etag, entry.last_modified):
        return Reply(304, selected(entry.headers, VALIDATOR_HEADERS), b"", outcome, note)
    return None
