"""rustup's files: channel manifests served as a matching pair with their `.sha256`, and archives that are
streamed to clients while they are downloaded, checked against the manifest before they are stored.

Facts (rustup 1.29): rustup fetches `channel-rust-X.toml.sha256`, then the `.toml`, and fails with a checksum
error if they disagree. So the `.sha256` we serve is computed from the stored `.toml` (bodies are stored by
their sha256), which makes a mismatched pair impossible, offline too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import tasks
from .errors import DiskFull, UpstreamError
from .fill import Fill
from .freshness import is_fresh, not_modified
from .policy import Decision, Kind, ManifestRef, Rule
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
from .rust_manifest import archive_hashes, parse_sha256_file, sha256_file_body
from .store import Entry, OpenBlob
from .upstream import UpstreamResponse

if TYPE_CHECKING:
    from .service import CacheService

logger = logging.getLogger(__name__)

# rustup asks for the .toml right after the .sha256: for this long after a pair was checked with upstream,
# a .toml request is answered from it without asking again, so both halves come from the same pair.
PAIR_WINDOW = 60.0
# Archives up to this size are downloaded whole before the client gets a byte; larger ones are streamed
# while they download, and a body that fails its check is cut short instead of answered with a 502.
WHOLE_BEFORE_SENDING = 8 * 1024 * 1024


# A body evicted between its lookup and its opening is looked up (or fetched) again, this many times in all:
# only a cache far smaller than what its clients ask for at once loses that race twice.
ARCHIVE_ATTEMPTS = 3
FORWARD = Reply(200, (), b"", Outcome.MISS, NOT_STORED_FULL, forward=True)


def _hash_key(host: str, path: str) -> str:
    return f"archive-sha256:{host}{path}"


class RustDist:
    def __init__(self, service: CacheService, clock: Callable[[], float]) -> None:
        self._service = service
        self._store = service.store
        self._upstream = service.upstream
        self._clock = clock
        self._fills: dict[str, Fill] = {}

    # ---------------------------------------------------------------- manifests

    async def manifest(self, decision: Decision, request: ClientRequest) -> Reply:
        assert decision.manifest is not None
        ref = decision.manifest
        want_sha256 = decision.kind is Kind.MANIFEST_SHA256
        entry = await asyncio.to_thread(self._store.lookup, decision.key)
        outcome, note = Outcome.HIT, ""
        if entry is None or not self._pair_fresh(decision, entry, want_sha256):
            fetched = await self._service.coalesced(
                decision, request, entry is not None, lambda: self._refresh_pair(decision, request, ref, entry)
            )
            if fetched is None or fetched.error is not None:
                reason = (
                    fetched.error.reason
                    if fetched is not None and fetched.error is not None
                    else self._service.too_slow(request, entry is not None)
                )
                current = entry or await asyncio.to_thread(self._store.lookup, decision.key)
                if current is None:
                    status = fetched.error.status if fetched is not None and fetched.error is not None else 504
                    return error_reply(status, reason)
                entry, outcome, note = current, Outcome.STALE, reason
            elif fetched.reply is not None:
                return fetched.reply
            elif fetched.entry is None:
                # Checked with upstream but not stored (the cache disk is full): pass the body on.
                assert fetched.body is not None
                if want_sha256:
                    digest = hashlib.sha256(fetched.body).hexdigest()
                    body = sha256_file_body(digest, ref.file_name)
                    return Reply(200, (("content-type", "text/plain; charset=utf-8"),), body, Outcome.MISS)
                return Reply(200, (("content-type", "text/plain"),), fetched.body, Outcome.MISS, NOT_STORED_FULL)
            else:
                entry, outcome = fetched.entry, fetched.outcome
        if want_sha256:
            body = sha256_file_body(entry.digest, ref.file_name)
            return Reply(200, (("content-type", "text/plain; charset=utf-8"),), body, outcome, note)
        return await self._service.answer(entry, request, outcome, note=note)

    def _pair_fresh(self, decision: Decision, entry: Entry, want_sha256: bool) -> bool:
        """The .sha256 (100 bytes) is checked with upstream on every request, so a new release is seen at
        once; the .toml right after it comes from the pair just checked. Dated manifests never change."""
        if decision.rule is Rule.IMMUTABLE:
            return True
        lifetime = decision.min_lifetime if want_sha256 else max(decision.min_lifetime, PAIR_WINDOW)
        return is_fresh(entry.stored_at, lifetime, self._clock())

    async def _refresh_pair(
        self, decision: Decision, request: ClientRequest, ref: ManifestRef, entry: Entry | None
    ) -> Fetched:
        """Check the pair with upstream and store a new one if upstream has one. Runs as a shared task."""
        sha_url = request.origin + ref.sha256_path
        toml_url = request.origin + ref.toml_path
        try:
            sha = await self._upstream.get(sha_url, {})
            if sha.status in (404, 410):
                body = f"ruststash: upstream has no {ref.file_name}\n".encode()
                return Fetched(reply=Reply(sha.status, (), body, Outcome.MISS))
            declared = self._declared(sha)
            if entry is not None and entry.digest == declared:
                now = self._clock()
                refreshed = await asyncio.to_thread(self._store.refresh, entry, now, entry.headers, entry.lifetime)
                return Fetched(refreshed, Outcome.REVALIDATED)
            toml = await self._matching_toml(toml_url, sha_url, declared)
            hashes = await asyncio.to_thread(archive_hashes, toml.body)
        except UpstreamError as exc:
            return Fetched(error=exc)
        except ValueError as exc:
            return Fetched(error=UpstreamError(f"{ref.file_name} from upstream is not a channel manifest ({exc})"))
        try:
            await asyncio.to_thread(
                self._store.put_meta,
                {_hash_key(request.host, ref.archive_request_path(path)): digest for path, digest in hashes.items()},
            )
            stored = await asyncio.to_thread(
                self._store.put,
                decision.key,
                toml.body,
                status=200,
                headers=selected(toml.headers, STORED_HEADERS),
                stored_at=self._clock(),
                lifetime=self._service.lifetime(decision, toml.header("cache-control")),
            )
        except DiskFull:
            return Fetched(None, Outcome.MISS, body=toml.body)
        return Fetched(stored, Outcome.MISS, body=toml.body)

    @staticmethod
    def _declared(sha: UpstreamResponse) -> str:
        if sha.status != 200:
            raise UpstreamError(f"upstream answered {sha.status} for the manifest's .sha256")
        declared = parse_sha256_file(sha.body)
        if declared is None:
            raise UpstreamError("upstream's manifest .sha256 is malformed")
        return declared

    async def _matching_toml(self, toml_url: str, sha_url: str, declared: str) -> UpstreamResponse:
        """The .toml whose sha256 is `declared`. If upstream published between our two requests, the .sha256
        is read again once; a pair that still disagrees is an error (and nothing is stored)."""
        for attempt in range(2):
            toml = await self._upstream.get(toml_url, {})
            if toml.status != 200:
                raise UpstreamError(f"upstream answered {toml.status} for {toml_url}")
            if hashlib.sha256(toml.body).hexdigest() == declared:
                return toml
            if attempt == 0:
                declared = self._declared(await self._upstream.get(sha_url, {}))
        raise UpstreamError("upstream's channel manifest does not match its .sha256")

    # ---------------------------------------------------------------- archives

    async def archive(self, decision: Decision, request: ClientRequest) -> Reply:
        """Stored: streamed from disk (Range too). Not stored: downloaded once however many clients ask,
        streamed to each while it is written, stored if it matches the manifest's hash."""
        for _ in range(ARCHIVE_ATTEMPTS):
            reply = await self._archive(decision, request)
            if reply is not None:
                return reply
        return error_reply(503, f"{request.host}{request.path}: evicted as soon as stored; the cache is too small")

    async def _archive(self, decision: Decision, request: ClientRequest) -> Reply | None:
        """The reply, or None if the stored body was evicted between finding it and opening it (then the
        caller asks again: it is found, or fetched, anew)."""
        found = await asyncio.to_thread(self._store.lookup_open, decision.key)
        if found is not None:
            return self._file_reply(*found, request, Outcome.HIT)
        if self._store.writes_paused():
            return FORWARD
        fill = self._fills.get(decision.key)
        if fill is None:
            fill = await self._start_fill(decision, request)
        else:
            self._service.metrics.coalesced_request(decision.kind.value)
        try:
            head = await asyncio.wait_for(asyncio.shield(fill.head), self._service.resilience.miss_timeout)
        except TimeoutError:
            return error_reply(504, self._service.too_slow(request, False))
        if head.error and self._store.writes_paused():
            return FORWARD  # it could not be written: let the client have it straight from upstream
        if head.error:
            return error_reply(head.error_status, f"{request.host}{request.path}: {head.error}")
        if head.status != 200:
            status = 502 if head.status >= 500 else head.status
            return error_reply(status, f"{request.host}: upstream answered {head.status} for {request.path}")
        small = head.content_length is not None and head.content_length <= WHOLE_BEFORE_SENDING
        if small or "range" in request.headers:
            # Small bodies (and resumed downloads, answered from the stored body) wait until the download
            # is whole and verified, so a bad one gets a 502 with the reason rather than a cut transfer.
            blob = await fill.whole()
            if fill.entry is None:
                return error_reply(502, f"{request.host}{request.path}: {fill.failure}")
            return None if blob is None else self._file_reply(fill.entry, blob, request, Outcome.MISS)
        return Reply(200, head.headers, b"", Outcome.MISS, fill=fill, size=head.content_length)

    async def _start_fill(self, decision: Decision, request: ClientRequest) -> Fill:
        # Registered before the first await, so clients arriving meanwhile join this download.
        fill = Fill(self._store, decision.key, None, STORED_HEADERS, self._service.metrics)
        self._fills[decision.key] = fill
        try:
            fill.expected_digest = await asyncio.to_thread(self._store.get_meta, _hash_key(request.host, request.path))
        finally:
            task = tasks.spawn(fill.run(self._upstream, request.url, {}), name=f"fill {decision.key}")
            task.add_done_callback(lambda _: self._forget(decision.key, fill))
        if fill.expected_digest is None:
            logger.info("no manifest hash known for %s%s: stored by its own sha256", request.host, request.path)
        return fill

    def _forget(self, key: str, fill: Fill) -> None:
        if self._fills.get(key) is fill:
            del self._fills[key]

    @staticmethod
    def _file_reply(entry: Entry, blob: OpenBlob, request: ClientRequest, outcome: Outcome) -> Reply:
        if not_modified(request.headers, entry.etag, entry.last_modified):
            blob.close()
            return Reply(304, selected(entry.headers, VALIDATOR_HEADERS), b"", outcome)
        return Reply(200, entry.headers, b"", outcome, file=blob, size=entry.size)
