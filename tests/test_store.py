from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ruststash.errors import ConfigError, IntegrityError, StoreError
from ruststash.settings import parse_size
from ruststash.store import ACCESS_GRANULARITY, PIN_SECONDS, Store

META = {"status": 200, "headers": (("etag", '"x"'),), "stored_at": 1000.0, "lifetime": math.inf}


def test_put_lookup_read_roundtrip(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    entry = store.put("crate:k", b"hello", **META)
    assert entry.digest == hashlib.sha256(b"hello").hexdigest()
    found = store.lookup("crate:k")
    assert found == entry and found.etag == '"x"'
    assert store.read(found) == b"hello"
    assert store.blob_path(entry.digest).read_bytes() == b"hello"


def test_identical_bodies_share_one_blob(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    a = store.put("crate:a", b"same", **META)
    b = store.put("crate:b", b"same", **META)
    assert a.digest == b.digest
    assert len(list((tmp_path / "c" / "blobs").rglob("*"))) == 2  # one fan-out directory, one blob


def test_digest_mismatch_stores_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    with pytest.raises(IntegrityError):
        store.put("crate:k", b"evil", expected_digest="0" * 64, **META)
    assert store.lookup("crate:k") is None
    assert not list((tmp_path / "c" / "blobs").rglob("*"))
    assert not list((tmp_path / "c" / "tmp").iterdir())


def test_entry_whose_blob_vanished_is_a_miss(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    entry = store.put("crate:k", b"body", **META)
    store.blob_path(entry.digest).unlink()
    assert store.lookup("crate:k") is None


def test_reopen_removes_stray_temp_files_and_keeps_entries(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    store.put("crate:k", b"body", **META)
    writer = store.writer()
    writer.write(b"half a bo")  # a crash here leaves a temp file behind
    writer._file.close()
    store.close()
    reopened = Store(tmp_path / "c")
    assert not list((tmp_path / "c" / "tmp").iterdir())
    entry = reopened.lookup("crate:k")
    assert entry is not None and reopened.read(entry) == b"body"


def test_refresh_updates_time_and_headers(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    entry = store.put("index:k", b"body", **{**META, "lifetime": 600.0})
    store.refresh(entry, 2000.0, (("etag", '"y"'),), 300.0)
    found = store.lookup("index:k")
    assert found is not None and found.stored_at == 2000.0 and found.etag == '"y"' and found.lifetime == 300.0


def test_a_refresh_that_arrives_after_a_newer_download_or_a_purge_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    old = store.put("index:k", b"old body", **{**META, "lifetime": 600.0})
    new = store.put("index:k", b"new body", **{**META, "lifetime": 600.0})  # finished while old was revalidated
    answered = store.refresh(old, 2000.0, (("etag", '"y"'),), 300.0)
    assert answered.digest == old.digest and answered.stored_at == 2000.0  # still good for that one answer
    assert store.peek("index:k") == new
    entry, body = store.lookup_with_body("index:k", 1 << 20)
    assert entry == new and body == b"new body"

    store.remove_entries(["index:k"])  # `ruststash purge` in another process
    store.refresh(new, 3000.0, (("etag", '"z"'),), 300.0)
    assert store.peek("index:k") is None


def test_refuses_other_formats_and_foreign_directories(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "FORMAT").write_text("ruststash-store 0\n")
    with pytest.raises(StoreError, match="another format"):
        Store(tmp_path / "old")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a ruststash store"):
        Store(tmp_path / "foreign")


def test_eviction_drops_least_recently_used_and_keeps_under_the_cap(tmp_path: Path) -> None:
    now = [1000.0]
    store = Store(tmp_path / "c", max_bytes=1000, clock=lambda: now[0])
    for i in range(5):
        now[0] += 100
        store.put(f"crate:{i}", bytes([i]) * 300, **META)
        if i == 2:
            now[0] += 100
            assert store.lookup("crate:0") is not None  # 0 is used again: 1 is now the oldest
    used, _ = store.usage()
    assert used <= 900 and store.evictions >= 1
    assert store.lookup("crate:1") is None and store.lookup("crate:4") is not None
    # Every remaining entry has its blob, and every blob on disk is accounted for.
    on_disk = sum(p.stat().st_size for p in (tmp_path / "c" / "blobs").rglob("*") if p.is_file())
    assert on_disk == used
    for key in ("crate:0", "crate:2", "crate:3", "crate:4"):
        entry = store.lookup(key)
        if entry is not None:
            assert store.read(entry) == bytes([int(key[-1])]) * 300


def test_access_times_are_written_in_batches_and_never_undo_a_newer_entry(tmp_path: Path) -> None:
    """A hit notes its time in memory; the index gets the noted times at most once per ACCESS_GRANULARITY
    and when the store closes (what `ruststash ls`/`purge` in another process read). Writing them must not
    bring back an older entry."""
    now = [1000.0]
    store = Store(tmp_path / "c", clock=lambda: now[0])
    store.put("crate:a", b"a", **META)
    store.put("index:b", b"old", **META)
    now[0] += ACCESS_GRANULARITY + 1
    assert store.lookup("crate:a") is not None  # the first note in a minute is written at once
    assert store.lookup_with_body("index:b", 1024)[1] == b"old"  # this one waits
    tool = Store(tmp_path / "c", clean_tmp=False)  # e.g. `ruststash ls` beside the proxy
    assert {e.key: used for e, used in tool.entries()} == {"crate:a": now[0], "index:b": 1000.0}
    replaced = store.put("index:b", b"new", **META)  # refetched after its hit was noted
    now[0] += ACCESS_GRANULARITY + 1
    assert store.lookup("crate:a") is not None  # a minute later: everything noted is written
    used = {e.key: (e.digest, t) for e, t in tool.entries()}
    assert used["crate:a"][1] == now[0]
    assert used["index:b"][0] == replaced.digest  # the noted hit on the old body did not bring it back
    now[0] += 1
    assert store.lookup("index:b") is not None  # stored a minute ago, so noted; the last write was just now
    assert {e.key: t for e, t in tool.entries()}["index:b"] == now[0] - ACCESS_GRANULARITY - 2
    store.close()
    assert {e.key: t for e, t in tool.entries()}["index:b"] == now[0]  # written on close


def test_eviction_keeps_a_blob_another_entry_still_uses(tmp_path: Path) -> None:
    store = Store(tmp_path / "c", max_bytes=700, clock=lambda: 0.0)
    store.put("crate:a", b"x" * 300, **META)
    store.put("crate:b", b"x" * 300, **META)  # same body, one blob
    store.put("crate:c", b"y" * 300, **META)
    store.put("crate:d", b"z" * 300, **META)
    for key in ("crate:a", "crate:b", "crate:c", "crate:d"):
        entry = store.lookup(key)
        if entry is not None:
            assert store.blob_path(entry.digest).exists()


def test_an_opened_body_stays_whole_after_eviction_removes_it(tmp_path: Path) -> None:
    """What the blob server relies on: a body opened by `lookup_open` is sent whole even if eviction takes
    its file away before (or while) it is sent; and a body evicted before it was opened is a miss."""
    now = [1000.0]
    store = Store(tmp_path / "c", max_bytes=1000, clock=lambda: now[0])
    store.put("archive:a", b"a" * 600, **META)
    found = store.lookup_open("archive:a")
    assert found is not None
    entry, blob = found
    now[0] += PIN_SECONDS + 1  # the lookup's pin has run out: nothing holds the entry back any more
    store.put("archive:b", b"b" * 600, **META)
    assert not store.blob_path(entry.digest).exists() and store.lookup("archive:a") is None
    try:
        assert blob.path.read_bytes() == b"a" * 600
    finally:
        blob.close()
    assert store.open_blob(entry) is None


def test_verify_removes_corrupt_and_dangling(tmp_path: Path) -> None:
    store = Store(tmp_path / "c", clock=lambda: 10**10)
    good = store.put("crate:good", b"good", **META)
    bad = store.put("crate:bad", b"bad!", **META)
    gone = store.put("crate:gone", b"gone", **META)
    store.blob_path(bad.digest).write_bytes(b"evil")
    store.blob_path(gone.digest).unlink()
    orphan_digest = hashlib.sha256(b"orphan").hexdigest()
    orphan = tmp_path / "c" / "blobs" / orphan_digest[:2] / orphan_digest
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"orphan")
    report = store.verify()
    assert report.corrupt == (bad.digest,) and report.missing == ("crate:gone",) and not report.clean
    assert report.orphans == 1 and not orphan.exists()
    assert store.lookup("crate:bad") is None and store.lookup("crate:good") == good
    assert store.verify().clean


@pytest.mark.parametrize(
    ("text", "size"), [("20GiB", 20 * 1024**3), ("500MB", 500 * 10**6), ("1.5k", 1500), ("1048576", 1048576)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "5XB", "0", "-1GiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


def test_a_vanished_body_is_a_miss_and_its_entry_goes_whatever_its_size(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    small = store.put("index:small", b"s" * 10, **META)
    large = store.put("crate:large", b"l" * 100, **META)
    store.blob_path(small.digest).unlink()
    store.blob_path(large.digest).unlink()
    assert store.lookup_with_body("index:small", 50) == (None, None)
    assert store.lookup_with_body("crate:large", 50) == (None, None)  # too large to read along: checked
    assert store.peek("index:small") is None and store.peek("crate:large") is None
    assert store.lookup_with_body("crate:large", 50) == (None, None)


class ReleaseHook:
    """A lock that runs `hook` once, right after the first release made while `store` is evicting."""

    def __init__(self, store: Store, hook: Callable[[], object]) -> None:
        self._lock = threading.Lock()
        self._store = store
        self._hook: Callable[[], object] | None = hook

    def __enter__(self) -> ReleaseHook:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        if self._hook is not None and self._store._evicting.locked():
            hook, self._hook = self._hook, None
            hook()


def test_a_commit_that_lands_as_an_eviction_finishes_is_made_room_for(tmp_path: Path) -> None:
    now = [1000.0]
    store = Store(tmp_path / "c", max_bytes=1000, clock=lambda: now[0])
    for i in range(3):
        now[0] += 10
        store.put(f"crate:{i}", bytes([i]) * 300, **META)
    # The next commit passes the cap; just as its eviction has decided (down to 900 bytes) and let go of
    # the store's lock, another commit lands: its own eviction finds one running and leaves it the work.
    store._lock = ReleaseHook(store, lambda: store.put("crate:late", b"L" * 300, **META))  # type: ignore[assignment]
    now[0] += 10
    store.put("crate:3", b"3" * 300, **META)
    assert store.usage()[0] <= 1000, "the late commit left the store over its cap"
    on_disk = sum(p.stat().st_size for p in (tmp_path / "c" / "blobs").rglob("*") if p.is_file())
    assert on_disk <= 1000
    assert store.peek("crate:late") is not None and store.peek("crate:3") is not None
