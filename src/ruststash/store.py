"""The content-addressed store: blobs named by their sha256, and an index (diskcache) from cache key to entry.

Only this module imports diskcache. Every method blocks on disk: callers on the event loop go through
`asyncio.to_thread`. A body becomes visible in one step: it is written to `tmp/`, fsynced, checked against
its expected digest, renamed into `blobs/`, and only then does the index point at it. A crash leaves at worst
a stray temp file (removed when the store opens) or an unreferenced blob (harmless).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import diskcache

from .errors import BodyGone, DiskFull, IntegrityError, StoreError
from .hot_bodies import HotBodies, choose_for_memory

logger = logging.getLogger(__name__)

FORMAT = "ruststash-store 1"


@dataclass(frozen=True)
class Entry:
    """A stored response: what is needed to answer a client and to revalidate with upstream."""

    key: str
    digest: str
    size: int
    status: int
    headers: tuple[tuple[str, str], ...]
    stored_at: float
    lifetime: float

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @cached_property  # asked for on every hit (a client's validators are checked against them)
    def etag(self) -> str | None:
        return self.header("etag")

    @cached_property
    def last_modified(self) -> str | None:
        return self.header("last-modified")


class OpenBlob:
    """A read handle on a stored body, taken under the eviction lock: the body stays readable through it
    however long it takes to send, even if eviction (or `ruststash purge`) unlinks the file meanwhile.
    Whoever holds it closes it."""

    def __init__(self, fd: int, digest: str) -> None:
        self.fd: int | None = fd
        self.digest = digest

    @property
    def path(self) -> Path:
        """A path that opens this very file even after it was unlinked (Linux /proc)."""
        assert self.fd is not None, "the handle is closed"
        return Path(f"/proc/self/fd/{self.fd}")

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# After the disk was found full, stores are not even tried for this long (then one is, to see if space
# came back).
FULL_RETRY = 10.0


@contextlib.contextmanager
def disk_errors() -> Iterator[None]:
    """A full disk (file or SQLite) becomes DiskFull; other OS errors StoreError."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            raise DiskFull(f"the cache disk is full ({exc.strerror})") from exc
        raise StoreError(f"cannot write to the store: {exc.strerror or exc}") from exc
    except sqlite3.OperationalError as exc:
        if "full" in str(exc):
            raise DiskFull(f"the cache disk is full ({exc})") from exc
        raise StoreError(f"the store's index failed: {exc}") from exc


class BlobWriter:
    """A temp file that hashes what is written to it. `Store.commit` makes it a blob; `abort` drops it."""

    def __init__(self, tmp_dir: Path) -> None:
        with disk_errors():
            fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="blob-", suffix=".part")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        with disk_errors():
            self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def write_all(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def _close(self) -> None:
        if not self._file.closed:
            with disk_errors():
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()

    def abort(self) -> None:
        """Drop the temp file. Never raises for a full disk: closing flushes, and that may fail too."""
        if not self._file.closed:
            with contextlib.suppress(OSError):  # the buffered bytes are being thrown away anyway
                self._file.close()
        self.path.unlink(missing_ok=True)

    def finish(self) -> None:
        """Flush, fsync and close the temp file now (a tool holding many verified bodies until it commits them
        all must not keep a descriptor open for each); `Store.commit` or `Store.adopt` still takes it."""
        self._close()


# A hit records its time only if the last record is older than this: an exact LRU order is not worth a
# database write on every hit. Those records are kept in memory and written together, in one transaction,
# at most this often (and before an eviction decides, and when the store closes): a write per hit cost more
# than the rest of a hit's lookup. A crash loses at most this much of the LRU order, nothing else.
ACCESS_GRANULARITY = 60.0
# ... or as soon as this many are waiting.
ACCESS_BATCH = 10_000
# A body looked up this recently is about to be served (opened): eviction leaves it alone. Kept in memory:
# recording every hit in the database would cost a write per hit. (Once opened, unlinking it is harmless.)
PIN_SECONDS = 30.0
# Eviction, once the cap is passed, goes down to this fraction of it, so it does not run on every commit.
EVICT_TO = 0.9
ORPHAN_GRACE = 60.0
# At most this long reading bodies into memory at start (`fill_memory`)
FILL_SECONDS = 60.0
# Meta key of what the serving process held in memory when it stopped, most recently used first: the next
# start fills memory from it (`fill_memory`) without listing the whole index.
MEMORY_ORDER_META = "memory-order"


@dataclass(frozen=True)
class VerifyReport:
    checked: int
    corrupt: tuple[str, ...]  # digests whose blob did not hash to its name (removed, with their entries)
    missing: tuple[str, ...]  # keys whose blob was gone (entries removed)
    orphans: int  # blobs no entry pointed at (removed)

    @property
    def clean(self) -> bool:
        return not self.corrupt and not self.missing


class Store:
    def __init__(
        self,
        directory: Path,
        max_bytes: int = 0,
        clock: Callable[[], float] = time.time,
        clean_tmp: bool = True,
        hot_bytes: int = 0,
    ) -> None:
        """Open (or create) the store. `clean_tmp` removes what a crash left in tmp/: only the process that
        serves from the store may do that, not a tool that runs beside it. `hot_bytes`: memory for small
        bodies answered without a disk read (see hot_bodies and `lookup_hot`); 0 keeps none."""
        self.directory = directory
        self.max_bytes = max_bytes
        self._clock = clock
        self._blobs = directory / "blobs"
        self._blobs_dir = str(self._blobs)
        self._tmp = directory / "tmp"
        self.evictions = 0
        self.full_since: float | None = None
        self._lock = threading.Lock()  # held to unlink a body, and to pin or open one
        self._evicting = threading.Lock()
        self._evict_wanted = False
        # Guards the in-memory bookkeeping below; held only for dict operations, so the event loop may take
        # it. Taken after `_lock` when both are needed, never the other way round.
        self._memo_lock = threading.Lock()
        # Every write to the index or meta by this process, one at a time. SQLite lets one writer in; another
        # that finds the database locked sleeps in SQLite's busy handler (1, 2, 5, 10 ... ms) instead of
        # waking when the lock is free: with the worker threads of a cold cargo fetch storing at once, a
        # commit's index write took 5 ms on average (up to 180 ms) for 0.3 ms of work. Queued on this lock
        # they are handed over at once (other processes, the tools, still meet at SQLite's lock). Innermost:
        # nothing else is taken while it is held.
        self._writes = threading.Lock()
        self._hot = HotBodies(hot_bytes) if hot_bytes > 0 else None
        self._changes = 0  # bumped after every index change this process makes: see `_offer_hot`
        self._changed_keys: set[str] | None = None  # while `fill_memory` runs: the keys changed since it began
        self.memory_hits = 0
        self._pinned: dict[str, float] = {}
        self._accessed: dict[str, tuple[str, float]] = {}  # key -> (digest, time): not yet in the index
        self._accessed_flushed = clock()
        try:
            self._check_format()
            self._blobs.mkdir(parents=True, exist_ok=True)
            if clean_tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
            self._index = diskcache.Cache(str(directory / "index"), eviction_policy="none", size_limit=2**62)
            self._meta = diskcache.Cache(str(directory / "meta"), eviction_policy="none", size_limit=2**62)
            self._bytes = self._blob_bytes()
        except OSError as exc:
            raise StoreError(f"cannot open the store in {directory}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store's index in {directory}: {exc}") from exc

    def _check_format(self) -> None:
        marker = self.directory / "FORMAT"
        self.directory.mkdir(parents=True, exist_ok=True)
        if marker.exists():
            found = marker.read_text(encoding="utf-8", errors="replace").strip()
            if found != FORMAT:
                raise StoreError(
                    f"{self.directory} holds a store of another format ({found!r}, expected {FORMAT!r}): "
                    "point --cache-dir at a new directory or remove this one"
                )
        elif any(self.directory.iterdir()):
            raise StoreError(f"{self.directory} is not empty and is not a ruststash store: use another --cache-dir")
        else:
            partial = marker.with_name("FORMAT.tmp")  # a crash must not leave an empty marker behind
            partial.write_text(FORMAT + "\n", encoding="utf-8")
            os.replace(partial, marker)

    def close(self) -> None:
        self.flush_access_times()
        self._index.close()
        self._meta.close()

    def _blob_bytes(self) -> int:
        total = 0
        for _, size in self._blob_files():
            total += size
        return total

    def _blob_files(self) -> Iterator[tuple[Path, int]]:
        for fan in os.scandir(self._blobs):
            if fan.is_dir():
                for blob in os.scandir(fan.path):
                    if blob.is_file():
                        yield Path(blob.path), blob.stat().st_size

    def usage(self) -> tuple[int, int]:
        """(bytes of stored bodies, number of entries)."""
        return self._bytes, len(self._index)

    def check(self) -> None:
        """Raise StoreError unless the index answers and a body could be written now."""
        try:
            len(self._index)
            probe = self.writer()
            probe.abort()
        except OSError as exc:
            raise StoreError(f"the store cannot be written: {exc.strerror or exc}") from exc

    def blob_path(self, digest: str) -> Path:
        return Path(self._blob_file(digest))

    def _blob_file(self, digest: str) -> str:
        """`blob_path` as a string: the hit path builds one per request, and pathlib costs more."""
        return f"{self._blobs_dir}/{digest[:2]}/{digest}"

    def lookup(self, key: str) -> Entry | None:
        """The entry for `key`, or None; an entry whose blob is missing counts as absent."""
        return self._pinned_entry(key, check_present=True)

    def _pinned_entry(self, key: str, check_present: bool) -> Entry | None:
        """The entry for `key`, pinned (see PIN_SECONDS) and its access noted. With `check_present`, pinned
        and seen in place in one step under `_lock` (an eviction runs wholly before or after); without, the
        caller reads the body next and takes a missing file for a miss."""
        raw: dict[str, Any] | None = self._index.get(key)
        if raw is None:
            return None
        entry = _entry_from_dict(key, raw)
        now = self._clock()
        with self._lock:
            self._pin(entry.digest, now + PIN_SECONDS)
            present = os.path.exists(self._blob_file(entry.digest)) if check_present else True
        if not present:
            self._forget(key, entry.digest)
            return None
        if now - raw.get("accessed_at", 0.0) > ACCESS_GRANULARITY:
            self._note_access(key, entry.digest, now)
        return entry

    def _note_access(self, key: str, digest: str, now: float) -> None:
        with self._memo_lock:
            self._accessed[key] = (digest, now)
        if self.claim_access_flush(now):
            self.flush_access_times()

    def claim_access_flush(self, now: float) -> bool:
        """True (once) when the noted access times are due to be written: the caller then runs
        `flush_access_times`, in a worker thread if it is on the event loop."""
        with self._memo_lock:
            due = len(self._accessed) >= ACCESS_BATCH or now - self._accessed_flushed > ACCESS_GRANULARITY
            if due:
                self._accessed_flushed = now
            return due and bool(self._accessed)

    def flush_access_times(self) -> None:
        """Write the access times noted since the last flush, in one transaction. An entry replaced since
        (another digest) keeps its own time. Never raises: a hit must not fail over its LRU record."""
        with self._memo_lock:
            pending, self._accessed = self._accessed, {}
            self._accessed_flushed = self._clock()
        if not pending or self.writes_paused():
            return  # (with the disk full they are dropped: only the LRU order suffers)
        try:
            with self._writes, disk_errors(), self._index.transact():
                for key, (digest, at) in pending.items():
                    raw: dict[str, Any] | None = self._index.get(key)
                    if raw is not None and raw["digest"] == digest and raw.get("accessed_at", 0.0) < at:
                        self._index.set(key, {**raw, "accessed_at": at})
        except StoreError as exc:
            logger.debug("access times not recorded: %s", exc)

    def _pin(self, digest: str, until: float) -> None:
        """Keep eviction away from `digest` until `until` (in memory only: no database write per hit).
        Called with `_lock` held."""
        self._pinned[digest] = max(until, self._pinned.get(digest, 0.0))
        if len(self._pinned) > 4096:
            now = self._clock()
            for old in [d for d, t in self._pinned.items() if t < now]:
                del self._pinned[old]

    def lookup_open(self, key: str) -> tuple[Entry, OpenBlob] | None:
        """`lookup`, and a handle on the body (see OpenBlob); None if absent or evicted in between."""
        entry = self.lookup(key)
        if entry is None:
            return None
        blob = self.open_blob(entry)
        return None if blob is None else (entry, blob)

    def open_blob(self, entry: Entry) -> OpenBlob | None:
        """A handle on `entry`'s body, or None if it is gone (evicted or purged since it was looked up)."""
        with self._lock:  # eviction unlinks under this lock: a body opened here was whole and in place
            try:
                fd = os.open(self._blob_file(entry.digest), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
        return OpenBlob(fd, entry.digest)

    def lookup_with_body(self, key: str, max_body: int) -> tuple[Entry | None, bytes | None]:
        """`lookup`, plus the body when it is at most `max_body` bytes: a hit on a small body then costs one
        trip to a worker thread, not two. (The body is read right after the entry is pinned: a missing file,
        removed before the pin, is a miss.)"""
        mark = self._changes
        entry = self._pinned_entry(key, check_present=False)
        if entry is None:
            return None, None
        path = self._blob_file(entry.digest)
        try:
            if entry.size <= max_body:
                with open(path, "rb") as file:
                    body = file.read()
                self._offer_hot(entry, body, mark)
                return entry, body
            if os.path.exists(path):
                return entry, None
        except FileNotFoundError:
            pass
        self._forget(key, entry.digest)
        return None, None

    def _forget(self, key: str, digest: str) -> None:
        """Drop an entry whose body is gone, unless `key` was pointed at another body meanwhile."""
        try:
            with self._writes, disk_errors(), self._index.transact():
                raw: dict[str, Any] | None = self._index.get(key)
                if raw is not None and raw["digest"] == digest:
                    self._index.delete(key)
        except StoreError as exc:
            logger.debug("entry %s not dropped: %s", key, exc)
        self._changed(key)

    def peek_hot(self, key: str) -> Entry | None:
        """The entry held in memory for `key`, if any, without checking its blob or recording a use."""
        if self._hot is None:
            return None
        with self._memo_lock:
            item = self._hot.peek(key)
        return item[0] if item is not None else None

    def lookup_hot(self, key: str, answered: bool = True) -> tuple[Entry, bytes] | None:
        """The entry and body for `key` if held in memory, else None (then use `lookup_with_body`). Costs one
        `stat` and never waits on `_lock` or a worker thread: safe on the event loop. A body whose blob another
        process removed (`ruststash purge`) is dropped here, so a purge takes effect as it does on disk.
        `answered`: the body goes to a client (counted in `memory_hits`, and a use for the memory's LRU order),
        not only read by the proxy (a crate's cksum looked up in its index file: the order stays the clients',
        which the next start's fill follows)."""
        if self._hot is None:
            return None
        with self._memo_lock:
            item = self._hot.get(key) if answered else self._hot.peek(key)
        if item is None:
            return None
        entry = item[0]
        if not os.path.exists(self._blob_file(entry.digest)):
            with self._memo_lock:
                self._hot.discard(key, entry.digest)
            return None
        with self._memo_lock:
            self._accessed[key] = (entry.digest, self._clock())
            self.memory_hits += answered
        return item

    def fill_memory(self, stop: threading.Event, max_seconds: float = FILL_SECONDS) -> tuple[int, int]:
        """Read into memory the small bodies used most recently (as `hot_bodies.choose_for_memory` picks
        them), behind whatever clients were answered from memory since the start: a proxy restarted on a
        filled cache then answers them as one that kept running would. They are read in the order they were
        last used: a build run again asks for them in much that order (cargo: index files, then crates), and
        finds each read before it asks, where newest first it would ask for index files while the fill read
        crates. After a clean stop they are what that process held, in its order (`memory_order_meta`), each
        read with the index's entry as it is now; else they come from a listing of the whole index by
        access time. Each body goes in with the entry its listing read (no second read of the index), unless
        that key's entry was changed by this process since the fill began (`_changed_keys`): a commit
        racing the fill is never undone by it. For a worker thread, beside the serving; stops at `stop` or
        after `max_seconds`. Returns (bodies, bytes) read."""
        hot = self._hot
        if hot is None:
            return 0, 0
        ends = time.monotonic() + max_seconds
        count = size = 0
        newest_first: list[str] = []  # the keys chosen
        with self._memo_lock:
            self._changed_keys = set()  # from now on: the listing below may be out of date for these
        try:
            saved = self._take_memory_order()
            if saved is None:
                chosen = choose_for_memory(self._small_entries(stop, ends, hot.max_body), hot.budget, hot.max_body)
                newest_first = [entry.key for entry in chosen]
                oldest_first: Iterator[Entry] = reversed(chosen)
            else:
                logger.info(
                    "start-up fill: reading the %d bodies the last run held in memory, in its order", len(saved)
                )
                newest_first = choose_for_memory(
                    ((key, size, -rank) for rank, (key, size) in enumerate(saved)), hot.budget, hot.max_body
                )
                oldest_first = self._current_entries(reversed(newest_first))
            for entry in oldest_first:  # in the order the last run used them: a replay finds them read
                if stop.is_set() or time.monotonic() > ends:
                    break
                try:
                    with open(self._blob_file(entry.digest), "rb") as file:
                        body = file.read()
                except FileNotFoundError:
                    continue
                with self._memo_lock:
                    if entry.key not in self._changed_keys and hot.put_if_room(entry, body):
                        count, size = count + 1, size + len(body)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            logger.warning("stopped reading stored bodies into memory: %s", exc)
        finally:
            with self._memo_lock:
                self._changed_keys = None
                hot.rank_filled(newest_first)
        return count, size

    def memory_order_meta(self) -> dict[str, str]:
        """For `put_meta` when the serving process stops: what memory holds, for the next start's fill."""
        if self._hot is None:
            return {}
        with self._memo_lock:
            order = self._hot.order()
        return {MEMORY_ORDER_META: json.dumps(order, separators=(",", ":"))}

    def _take_memory_order(self) -> list[tuple[str, int]] | None:
        """The (key, size) pairs a process that stopped cleanly held in memory, most recently used first,
        removed from the meta as they are read (a process that then crashes leaves none: the next start
        lists the index). None: there are none, or none could be read."""
        raw = self.get_meta(MEMORY_ORDER_META)
        if raw is None:
            return None
        with self._writes:
            self._meta.delete(MEMORY_ORDER_META)
        try:
            order = [(str(key), int(size)) for key, size in json.loads(raw)]
            return order or None  # nothing held (stopped before its own fill got far): list the index
        except (ValueError, TypeError):
            logger.warning("the memory order kept by the last run is not readable; listing the index instead")
            return None

    def _current_entries(self, keys: Iterable[str]) -> Iterator[Entry]:
        """The index's entry for each of `keys` that still has one, read as it is reached."""
        for key in keys:
            raw: dict[str, Any] | None = self._index.get(key)
            if raw is not None:
                yield _entry_from_dict(key, raw)

    def _small_entries(self, stop: threading.Event, ends: float, max_body: int) -> Iterator[tuple[Entry, int, float]]:
        """(entry, size, last used) of each entry up to `max_body`, read one at a time (a large store
        is never listed whole), until `stop` or the monotonic time `ends`."""
        for key in self._index.iterkeys():
            if stop.is_set() or time.monotonic() > ends:
                return
            raw: dict[str, Any] | None = self._index.get(key)
            if raw is not None and raw["size"] <= max_body:
                yield _entry_from_dict(key, raw), raw["size"], float(raw.get("accessed_at", raw["stored_at"]))

    def memory_bytes(self) -> int:
        """Bytes of bodies held in memory."""
        with self._memo_lock:
            return 0 if self._hot is None else self._hot.size

    def _offer_hot(self, entry: Entry, body: bytes, mark: int) -> None:
        """Hold `body` in memory unless the index changed since `mark` (read before `entry` was): a
        lookup racing a commit must not put back a body the commit replaced. Every index change calls
        `_changed` after writing, so what is held always matches the index or is about to be dropped."""
        if self._hot is None:
            return
        with self._memo_lock:
            if self._changes == mark:
                self._hot.put(entry, body)

    def _changed(self, *keys: str) -> int:
        """Called after the index entries of `keys` were changed or removed: drops their bodies from
        memory. Returns the new change mark."""
        with self._memo_lock:
            self._count_change(keys)
            if self._hot is not None:
                for key in keys:
                    self._hot.discard(key)
            return self._changes

    def _count_change(self, keys: Iterable[str]) -> None:
        """Bump the change mark and note `keys` for a fill in progress. Called with `_memo_lock` held."""
        self._changes += 1
        if self._changed_keys is not None:
            self._changed_keys.update(keys)

    def writes_paused(self) -> bool:
        """True while the disk was found full recently: callers serve without trying to store."""
        return self.full_since is not None and self._clock() - self.full_since < FULL_RETRY

    def _disk_full(self) -> None:
        if self.full_since is None:
            logger.warning("the cache disk (%s) is full: serving without storing until space returns", self.directory)
        self.full_since = self._clock()

    def _disk_ok(self) -> None:
        if self.full_since is not None:
            logger.warning("the cache disk (%s) has space again: storing resumed", self.directory)
            self.full_since = None

    def read(self, entry: Entry) -> bytes:
        """The body of `entry`; BodyGone if it was removed since the entry was looked up."""
        try:
            return self.blob_path(entry.digest).read_bytes()
        except FileNotFoundError as exc:
            raise BodyGone(f"the body of {entry.key} was removed while it was being answered") from exc
        except OSError as exc:
            raise StoreError(f"cannot read blob {entry.digest}: {exc.strerror or exc}") from exc

    def writer(self) -> BlobWriter:
        try:
            return BlobWriter(self._tmp)
        except DiskFull:
            self._disk_full()
            raise

    def commit(
        self,
        writer: BlobWriter,
        key: str,
        *,
        status: int,
        headers: tuple[tuple[str, str], ...],
        stored_at: float,
        lifetime: float,
        expected_digest: str | None = None,
        body: bytes | None = None,
    ) -> Entry:
        """Make the written body a blob and point `key` at it, or raise IntegrityError (nothing stored) or
        DiskFull (nothing stored). `body`, when the caller holds it whole, may be kept in memory."""
        try:
            new_blob, digest = self._commit_file(writer, key, expected_digest)
        except DiskFull:
            self._disk_full()
            raise
        entry = Entry(key, digest, writer.size, status, headers, stored_at, lifetime)
        try:
            with self._writes, disk_errors():
                self._index.set(key, {**_entry_to_dict(entry), "accessed_at": self._clock()})
        except DiskFull:
            self._disk_full()  # the body is in place but unreferenced: harmless, `verify` removes it
            raise
        finally:
            mark = self._changed(key)
        if body is not None:
            self._offer_hot(entry, body, mark)
        self._disk_ok()
        with self._lock:
            if new_blob:
                self._bytes += writer.size
            over = self.max_bytes and self._bytes > self.max_bytes
        if over:
            self._evict()
        return entry

    def _commit_file(self, writer: BlobWriter, key: str, expected_digest: str | None) -> tuple[bool, str]:
        """Verify and rename the body into place: (whether the blob is new, its digest)."""
        try:
            writer._close()
            digest = writer.digest
            if expected_digest is not None and digest != expected_digest:
                raise IntegrityError(key, expected_digest, digest)
            target = self.blob_path(digest)
            target.parent.mkdir(exist_ok=True)
            new_blob = not target.exists()
            with disk_errors():
                os.replace(writer.path, target)
                _fsync_dir(target.parent)
        except BaseException:
            writer.abort()
            raise
        return new_blob, digest

    def _evict(self) -> None:
        """Make room (`_evict_pass`) once the cap is passed. One pass runs at a time; a commit that lands
        while one runs asks for another, which the running one does before it stops: that pass's list of
        entries was read before the commit, so it could end with the store still over the cap."""
        self._evict_wanted = True
        while self._evict_wanted:
            if not self._evicting.acquire(blocking=False):
                return  # the pass running now sees the request before it lets go
            try:
                while self._evict_wanted:
                    self._evict_wanted = False
                    if self._bytes > self.max_bytes:
                        self._evict_pass()
            finally:
                self._evicting.release()

    def _evict_pass(self) -> None:
        """Drop least recently used entries until the store is under EVICT_TO of its cap. An entry goes
        before its blob, and a blob only when no entry points at it: a crash in between leaves at worst an
        unreferenced blob, never an entry without its body. (A channel manifest's .sha256 is computed from
        the stored .toml, so the pair cannot be split.) The index is read without `_lock` (lookups go on);
        deciding and removing happen under it, so a body pinned or opened under it is never taken away."""
        entries: list[tuple[float, str, str]] = []
        references: Counter[str] = Counter()
        with self._memo_lock:
            noted = dict(self._accessed)  # access times not yet written count too
        for key in list(self._index.iterkeys()):
            raw = self._index.get(key)
            if raw is None:
                continue
            used = raw.get("accessed_at", raw["stored_at"])
            if key in noted and noted[key][0] == raw["digest"]:
                used = max(used, noted[key][1])
            entries.append((used, key, raw["digest"]))
            references[raw["digest"]] += 1
        entries.sort()
        goal = self.max_bytes * EVICT_TO
        with self._lock:
            now = self._clock()
            for _, key, digest in entries:
                if self._bytes <= goal:
                    break
                if self._pinned.get(digest, 0.0) > now:
                    continue  # being served right now: a client must never find its body gone
                with self._writes:
                    self._index.delete(key)
                self._changed(key)
                self.evictions += 1
                references[digest] -= 1
                if references[digest] == 0:
                    self._bytes -= _unlink_size(self._blob_file(digest)) or 0

    def verify(self) -> VerifyReport:
        """Re-hash every blob. Corrupt blobs are removed with the entries that point at them, entries whose
        blob is gone are removed, and so are blobs no entry points at."""
        referenced: dict[str, list[str]] = {}
        for key in list(self._index.iterkeys()):
            raw = self._index.get(key)
            if raw is not None:
                referenced.setdefault(raw["digest"], []).append(key)
        checked, corrupt, orphans = 0, [], 0
        seen: set[str] = set()
        for path, _ in list(self._blob_files()):
            checked += 1
            seen.add(path.name)
            if _sha256_of(path) != path.name:
                corrupt.append(path.name)
                for key in referenced.get(path.name, []):
                    with self._writes:
                        self._index.delete(key)
                    self._changed(key)
                path.unlink(missing_ok=True)
            elif path.name not in referenced and self._clock() - path.stat().st_mtime > ORPHAN_GRACE:
                orphans += 1  # (a young one may be a commit in progress in a running proxy)
                path.unlink(missing_ok=True)
        missing = [key for digest, keys in referenced.items() if digest not in seen for key in keys]
        for key in missing:
            with self._writes:
                self._index.delete(key)
        self._changed(*missing)
        with self._lock:
            self._bytes = self._blob_bytes()
        return VerifyReport(checked, tuple(corrupt), tuple(missing), orphans)

    def put(self, key: str, body: bytes, **meta: Any) -> Entry:
        if self.writes_paused():
            raise DiskFull("the cache disk is full")
        writer = self.writer()
        try:
            writer.write(body)
        except DiskFull:
            writer.abort()
            self._disk_full()
            raise
        except BaseException:
            writer.abort()
            raise
        return self.commit(writer, key, body=body, **meta)

    def refresh(self, entry: Entry, stored_at: float, headers: tuple[tuple[str, str], ...], lifetime: float) -> Entry:
        """Record a successful revalidation: new stored time and the headers upstream sent with its 304. If
        the key was pointed at another body or removed since `entry` was read (a download or a purge that
        finished first), that change stands: the index is left as it is."""
        updated = replace(entry, stored_at=stored_at, headers=headers, lifetime=lifetime)
        try:
            with self._writes, disk_errors(), self._index.transact():
                current: dict[str, Any] | None = self._index.get(entry.key)
                if current is None or current["digest"] != entry.digest:
                    return updated  # still good for this answer
                self._index.set(entry.key, _entry_to_dict(updated))
        except DiskFull:
            self._disk_full()
            self._changed(entry.key)
            return updated  # still fresh for this answer; the stored copy keeps its old time
        except BaseException:
            self._changed(entry.key)
            raise
        self._refreshed(updated)
        return updated

    def _refreshed(self, updated: Entry) -> None:
        """`_changed` for a revalidation, which keeps the body: a body held for the same digest stays held
        with the new entry (an index file is revalidated on every request; dropping it would send the next
        request to the disk). A body of another digest is dropped as after any change."""
        with self._memo_lock:
            self._count_change((updated.key,))
            if self._hot is None:
                return
            held = self._hot.get(updated.key)
            self._hot.discard(updated.key)
            if held is not None and held[0].digest == updated.digest:
                self._hot.put(updated, held[1])

    def delete(self, key: str) -> None:
        with self._writes:
            self._index.delete(key)
        self._changed(key)

    # Small facts learned from stored bodies (the sha256 a manifest gives each archive), kept apart from
    # the entries.

    def put_meta(self, values: dict[str, str]) -> None:
        try:
            with self._writes, disk_errors(), self._meta.transact():
                for key, value in values.items():
                    self._meta.set(key, value)
        except DiskFull:
            self._disk_full()
            raise

    def get_meta(self, key: str) -> str | None:
        value = self._meta.get(key)
        return value if isinstance(value, str) else None

    # Operator tools (warm, export, import, stats, ls, purge) run beside a serving proxy: they read entries
    # without recording an access, and change the index only in the steps below.

    def peek(self, key: str) -> Entry | None:
        """The entry for `key` as stored (its blob may be gone), without recording an access."""
        raw: dict[str, Any] | None = self._index.get(key)
        return _entry_from_dict(key, raw) if raw is not None else None

    def entries(self) -> Iterator[tuple[Entry, float]]:
        """Every entry with the time it was last served or stored, without recording an access."""
        for key in list(self._index.iterkeys()):
            raw: dict[str, Any] | None = self._index.get(key)
            if raw is not None:
                yield _entry_from_dict(key, raw), float(raw.get("accessed_at", raw["stored_at"]))

    def meta_items(self, prefix: str = "") -> dict[str, str]:
        out: dict[str, str] = {}
        for key in list(self._meta.iterkeys()):
            if isinstance(key, str) and key.startswith(prefix):
                value = self._meta.get(key)
                if isinstance(value, str):
                    out[key] = value
        return out

    def adopt(self, writer: BlobWriter, digest: str) -> None:
        """Make a written, already verified body the blob `digest` without pointing any key at it yet
        (`put_entries` does that). Raises IntegrityError if it does not hash to `digest` (nothing stored)."""
        new_blob, _ = self._commit_file(writer, digest, digest)
        if new_blob:
            with self._lock:
                self._bytes += writer.size

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def put_entries(self, entries: list[Entry], meta: dict[str, str]) -> None:
        """Point keys at blobs already in place and record meta facts, all in one transaction each."""
        now = self._clock()
        with disk_errors():
            with self._writes, self._meta.transact():
                for key, value in meta.items():
                    self._meta.set(key, value)
            try:
                with self._writes, self._index.transact():
                    for entry in entries:
                        self._index.set(entry.key, {**_entry_to_dict(entry), "accessed_at": now})
            finally:
                self._changed(*(entry.key for entry in entries))

    def remove_entries(self, keys: list[str]) -> tuple[int, int, int]:
        """Delete these entries, then the blobs no remaining entry points at: (entries removed, blobs
        removed, bytes freed). Entries go first, so a crash in between leaves only unreferenced blobs."""
        doomed: set[str] = set()
        removed = 0
        for key in keys:
            raw: dict[str, Any] | None = self._index.get(key)
            with self._writes:
                deleted = raw is not None and self._index.delete(key)
            if raw is not None and deleted:
                removed += 1
                doomed.add(raw["digest"])
        self._changed(*keys)
        if doomed:
            for entry, _ in self.entries():
                doomed.discard(entry.digest)
        blobs, freed = 0, 0
        with self._lock:
            for digest in doomed:
                size = _unlink_size(self._blob_file(digest))
                if size is not None:
                    blobs += 1
                    freed += size
            self._bytes -= freed
        return removed, blobs, freed


def _unlink_size(path: str) -> int | None:
    """Remove a blob: the bytes it freed, or None if it was already gone."""
    try:
        size = os.stat(path).st_size
        os.unlink(path)
    except FileNotFoundError:
        return None
    return size


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as body:
        while chunk := body.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entry_to_dict(entry: Entry) -> dict[str, Any]:
    return {
        "digest": entry.digest,
        "size": entry.size,
        "status": entry.status,
        "headers": [list(h) for h in entry.headers],
        "stored_at": entry.stored_at,
        "lifetime": entry.lifetime,
    }


def _entry_from_dict(key: str, raw: dict[str, Any]) -> Entry:
    return Entry(
        key=key,
        digest=raw["digest"],
        size=raw["size"],
        status=raw["status"],
        headers=tuple((str(k), str(v)) for k, v in raw["headers"]),
        stored_at=raw["stored_at"],
        lifetime=raw["lifetime"],
    )
