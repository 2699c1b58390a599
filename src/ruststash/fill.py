"""A Fill: one upstream download written to a temp file and hashed as it arrives, that any number of
clients can read while it is being written. It is committed to the store only once whole and verified;
readers are held back from its last byte until then, so a client never receives a complete body that
turns out to be wrong (the transfer is cut instead) and nothing partial is ever stored."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .errors import IntegrityError, StoreError, UpstreamError
from .metrics import Metrics
from .store import BlobWriter, Entry, OpenBlob, Store
from .upstream import Upstream

logger = logging.getLogger(__name__)

# Disk writes and hashing are handed to a thread in batches of about this size: per-chunk thread hops for
# 64 KiB network reads would cost more than the work itself.
WRITE_BATCH = 1 << 20
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class FillHead:
    """What upstream answered before its body: enough to answer clients (or to fail them clearly)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    content_length: int | None
    error: str = ""
    error_status: int = 502


class Fill:
    def __init__(
        self,
        store: Store,
        key: str,
        expected_digest: str | None,
        stored_headers: tuple[str, ...],
        metrics: Metrics,
    ) -> None:
        self.store = store
        self._metrics = metrics
        self.key = key
        self.expected_digest = expected_digest
        self._stored_headers = stored_headers
        self.head: asyncio.Future[FillHead] = asyncio.get_running_loop().create_future()
        self.written = 0
        self.entry: Entry | None = None
        self.failure: str | None = None
        self._changed = asyncio.Event()
        self._writer: BlobWriter | None = None
        self.path: Path | None = None
        self._fd: int | None = None
        self._readers = 0

    @property
    def finished(self) -> bool:
        return self.entry is not None or self.failure is not None

    async def run(self, upstream: Upstream, url: str, headers: dict[str, str]) -> None:
        """Download, write, verify, commit. Never raises: the outcome is in `head`, `entry`, `failure`."""
        try:
            async with upstream.stream(url, headers) as response:
                head = FillHead(
                    response.status,
                    tuple((k.lower(), v) for k, v in response.headers if k.lower() in self._stored_headers),
                    response.content_length,
                )
                if response.status != 200:
                    self._fail(f"upstream answered {response.status}", head)
                    return
                self._writer = await asyncio.to_thread(self.store.writer)
                self.path = self._writer.path
                self._fd = os.open(self.path, os.O_RDONLY)
                self.head.set_result(head)
                await self._copy(response.chunks())
                self.entry = await asyncio.to_thread(
                    self.store.commit,
                    self._writer,
                    self.key,
                    status=200,
                    headers=head.headers,
                    stored_at=time.time(),
                    lifetime=math.inf,
                    expected_digest=self.expected_digest,
                )
        except UpstreamError as exc:
            self._fail(exc.reason, FillHead(0, (), None, exc.reason, exc.status))
        except IntegrityError as exc:
            self._metrics.integrity_failure("archive")
            self._fail(f"sha256 {exc.actual} is not the published {exc.expected}; not stored", None)
        except (StoreError, OSError) as exc:
            self._fail(f"cache store failure: {exc}", FillHead(0, (), None, f"cache store failure: {exc}", 503))
        finally:
            if self.entry is None and self._writer is not None:
                await asyncio.to_thread(self._writer.abort)
            self._changed.set()
            self._release()

    async def _copy(self, chunks: AsyncIterator[bytes]) -> None:
        assert self._writer is not None
        batch: list[bytes] = []
        pending = 0
        async for chunk in chunks:
            batch.append(chunk)
            pending += len(chunk)
            if pending >= WRITE_BATCH:
                await self._flush(batch, pending)
                batch, pending = [], 0
        if batch:
            await self._flush(batch, pending)

    async def _flush(self, batch: list[bytes], size: int) -> None:
        assert self._writer is not None
        await asyncio.to_thread(self._writer.write_all, batch)
        self.written += size
        self._changed.set()
        self._changed = asyncio.Event()

    def _fail(self, reason: str, head: FillHead | None) -> None:
        self.failure = reason
        logger.warning("download of %s failed: %s", self.key, reason)
        if not self.head.done():
            self.head.set_result(head or FillHead(0, (), None, reason))

    async def changed(self) -> None:
        """Wait until more is written or the fill has finished."""
        if not self.finished:
            await self._changed.wait()

    async def whole(self) -> OpenBlob | None:
        """Wait until the download is over: then a handle of the caller's own on the verified body, or None
        if the download failed (see `failure`) or its body was evicted before it could be opened."""
        self._readers += 1  # holds the shared handle open while we wait, so the body cannot slip away
        try:
            while not self.finished:
                await self.changed()
            if self.entry is None:
                return None
            if self._fd is not None:
                return OpenBlob(os.dup(self._fd), self.entry.digest)
            return await asyncio.to_thread(self.store.open_blob, self.entry)
        finally:
            self._readers -= 1
            self._release()

    def _release(self) -> None:
        """Close the shared read handle once the fill is over and no reader needs it."""
        if self._fd is not None and self.finished and self._readers == 0:
            os.close(self._fd)
            self._fd = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it is written. Raises UpstreamError if the fill fails (the reader must then cut the
        transfer short); the last byte is released only after the body is verified and committed.

        Readers share one read-only handle opened when the temp file was created, reading at explicit
        offsets: the file stays readable after the commit renames it, and even after eviction unlinks it."""
        head = await self.head
        if head.error:
            raise UpstreamError(head.error)
        own_fd = None
        if self._fd is None:  # the download finished and its readers left: read the stored blob instead
            if self.entry is None:
                raise UpstreamError(self.failure or "the download is over")
            try:
                own_fd = os.open(self.store.blob_path(self.entry.digest), os.O_RDONLY)
            except FileNotFoundError:
                raise UpstreamError("the stored body was removed before it could be sent") from None
        fd = own_fd if own_fd is not None else self._fd
        assert fd is not None
        self._readers += 1
        try:
            sent = 0
            while True:
                if self.failure is not None:
                    raise UpstreamError(self.failure)
                limit = self.written if self.entry is not None else self.written - 1
                if sent < limit:
                    data = await asyncio.to_thread(os.pread, fd, min(limit - sent, READ_CHUNK), sent)
                    if not data:
                        raise UpstreamError("temp file ended early")
                    sent += len(data)
                    yield data
                    continue
                if self.entry is not None:
                    return
                await self.changed()
        finally:
            self._readers -= 1
            if own_fd is not None:
                os.close(own_fd)
            self._release()
