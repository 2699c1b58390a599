"""Small bodies held in memory by the Store (`hot_bytes`): answered without the disk, and never out of step
with the index: every change this process makes drops the held copy, and a body another process removed
(`ruststash purge`) is not answered from memory either."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from ruststash.store import ACCESS_GRANULARITY, MEMORY_ORDER_META, Entry, Store

META = {"status": 200, "headers": (("etag", '"x"'),), "stored_at": 1000.0, "lifetime": math.inf}
MIB = 1024 * 1024


def overwrite_on_disk(store: Store, entry: Entry, data: bytes) -> None:
    """Change a blob's bytes behind the store's back: a read from disk would now see `data`."""
    path = store.blob_path(entry.digest)
    os.chmod(path, 0o600)
    path.write_bytes(data)


def test_a_stored_small_body_is_answered_from_memory(tmp_path: Path) -> None:
    store = Store(tmp_path / "c", hot_bytes=MIB)
    entry = store.put("crate:k", b"hello", **META)
    overwrite_on_disk(store, entry, b"HELLO")
    assert store.lookup_hot("crate:k") == (entry, b"hello")
    assert store.memory_hits == 1 and store.memory_bytes() == 5
    assert store.lookup_hot("crate:other") is None
    # The proxy reading a body for itself (an index file's cksum) is not a client answered from memory.
    assert store.lookup_hot("crate:k", answered=False) == (entry, b"hello")
    assert store.memory_hits == 1

    plain = Store(tmp_path / "plain")  # without hot_bytes nothing is held
    plain.put("crate:k", b"hello", **META)
    assert plain.lookup_hot("crate:k") is None and plain.memory_bytes() == 0


def test_a_body_read_from_disk_is_held_for_the_next_hit(tmp_path: Path) -> None:
    Store(tmp_path / "c").put("index:k", b"from an earlier run", **META)
    store = Store(tmp_path / "c", hot_bytes=MIB)
    assert store.lookup_hot("index:k") is None
    entry, body = store.lookup_with_body("index:k", MIB)
    assert body == b"from an earlier run" and entry is not None
    assert store.lookup_hot("index:k") == (entry, body)


def test_every_index_change_drops_the_held_body(tmp_path: Path) -> None:
    store = Store(tmp_path / "c", hot_bytes=MIB)
    store.put("index:k", b"one", **META)
    two = store.put("index:k", b"two", **META)
    assert store.lookup_hot("index:k") == (two, b"two")

    writer = store.writer()  # a streamed body: the store never holds it whole
    writer.write(b"three")
    three = store.commit(writer, "index:k", **META)
    assert store.lookup_hot("index:k") is None
    assert store.lookup_with_body("index:k", MIB) == (three, b"three")

    overwrite_on_disk(store, three, b"THREE")  # a revalidation keeps the body: no read from disk after it
    refreshed = store.refresh(three, 2000.0, (("etag", '"y"'),), 60.0)
    assert refreshed.etag == '"y"' and store.peek("index:k") == refreshed
    assert store.lookup_hot("index:k") == (refreshed, b"three")

    # A revalidation of an entry the key no longer holds (its answer arrived after a newer commit) changes
    # nothing: neither the index nor what is held.
    store.refresh(two, 3000.0, (("etag", '"z"'),), 60.0)
    assert store.peek("index:k") == refreshed
    assert store.lookup_hot("index:k") == (refreshed, b"three")

    store.delete("index:k")
    assert store.lookup_hot("index:k") is None

    store.put("crate:a", b"a", **META)
    store.remove_entries(["crate:a"])
    assert store.lookup_hot("crate:a") is None
    assert store.memory_bytes() == 0


def test_eviction_drops_held_bodies(tmp_path: Path) -> None:
    now = [1000.0]
    store = Store(tmp_path / "c", max_bytes=1000, clock=lambda: now[0], hot_bytes=MIB)
    for i in range(4):
        now[0] += 100
        store.put(f"crate:{i}", bytes([i]) * 300, **META)
    assert store.evictions >= 1
    for i in range(4):
        if store.peek(f"crate:{i}") is None:
            assert store.lookup_hot(f"crate:{i}") is None
        else:
            assert store.lookup_hot(f"crate:{i}") is not None


def test_a_lookup_that_raced_a_commit_does_not_put_back_the_old_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "c", hot_bytes=MIB)
    Store(tmp_path / "c").put("index:k", b"old", **META)  # on disk, not yet in memory
    read_entry = store._pinned_entry

    def read_then_lose_the_race(key: str, check_present: bool) -> Any:
        found = read_entry(key, check_present)
        store.put("index:k", b"new", **META)  # another thread commits between the read and the offer
        return found

    monkeypatch.setattr(store, "_pinned_entry", read_then_lose_the_race)
    assert store.lookup_with_body("index:k", MIB)[1] == b"old"  # what that lookup read, served once
    monkeypatch.undo()
    held = store.lookup_hot("index:k")
    assert held is not None and held[1] == b"new"


def test_a_body_purged_by_another_process_is_not_answered_from_memory(tmp_path: Path) -> None:
    store = Store(tmp_path / "c", hot_bytes=MIB)
    store.put("crate:k", b"purge me", **META)
    store.put("crate:kept", b"keep me", **META)
    tool = Store(tmp_path / "c", clean_tmp=False)  # `ruststash purge` beside the proxy
    assert tool.remove_entries(["crate:k"])[1] == 1
    assert store.lookup_hot("crate:k") is None
    assert store.lookup_with_body("crate:k", MIB) == (None, None)
    assert store.lookup_hot("crate:kept") is not None
    assert store.memory_bytes() == len(b"keep me")


def test_hits_from_memory_count_for_the_access_times(tmp_path: Path) -> None:
    now = [1000.0]
    store = Store(tmp_path / "c", clock=lambda: now[0], hot_bytes=MIB)
    store.put("crate:a", b"a", **META)
    assert not store.claim_access_flush(now[0])  # nothing noted yet
    now[0] += 10
    assert store.lookup_hot("crate:a") is not None
    assert not store.claim_access_flush(now[0])  # noted, but not due
    now[0] += ACCESS_GRANULARITY + 1
    assert store.claim_access_flush(now[0])
    assert not store.claim_access_flush(now[0])  # claimed once: one flush runs
    store.flush_access_times()
    tool = Store(tmp_path / "c", clean_tmp=False)
    assert dict((e.key, t) for e, t in tool.entries()) == {"crate:a": 1010.0}


def test_a_new_process_reads_the_most_recently_used_small_bodies_into_memory(tmp_path: Path) -> None:
    now = [1000.0]
    earlier = Store(tmp_path / "c", clock=lambda: now[0])
    for key in ("crate:old", "crate:used", "crate:new"):
        now[0] += 100
        earlier.put(key, key.encode() * 1000, **META)
    earlier.put("crate:large", b"x" * (2 * MIB), **META)  # larger than any body held in memory
    now[0] += ACCESS_GRANULARITY + 1
    assert earlier.lookup("crate:old") is not None  # used last: ranks first
    earlier.close()

    store = Store(tmp_path / "c", hot_bytes=20_000)  # room for two of the three small bodies
    asked = store.lookup_with_body("crate:new", MIB)  # a client was faster than the fill: held already
    assert asked[1] is not None
    assert store.fill_memory(threading.Event()) == (1, len(b"crate:old") * 1000)
    assert store.lookup_hot("crate:old") == (store.peek("crate:old"), b"crate:old" * 1000)
    assert store.lookup_hot("crate:new") == asked
    assert store.lookup_hot("crate:used") is None and store.lookup_hot("crate:large") is None


def test_the_fill_reads_bodies_in_the_order_they_were_last_used(tmp_path: Path) -> None:
    now = [1000.0]
    earlier = Store(tmp_path / "c", clock=lambda: now[0])
    used = ["index:se/rd/serde", "index:3/l/log", "crate:serde", "crate:log"]  # a cargo run's order
    for key in sorted(used):
        earlier.put(key, key.encode(), **META)
    for key in used:
        now[0] += ACCESS_GRANULARITY + 1
        assert earlier.lookup(key) is not None
    earlier.flush_access_times()
    earlier.close()

    store = Store(tmp_path / "c", hot_bytes=MIB)
    assert filled_in_order(store) == used


def test_the_fill_skips_what_changed_and_stops_when_told(tmp_path: Path) -> None:
    Store(tmp_path / "c").put("index:k", b"stored", **META)
    store = Store(tmp_path / "c", hot_bytes=MIB)
    stop = threading.Event()
    stop.set()
    assert store.fill_memory(stop) == (0, 0) and store.memory_bytes() == 0

    blob_file = store._blob_file

    def revalidated_meanwhile(digest: str) -> str:  # a change lands between the fill's listing and its put
        found = store.peek("index:k")
        assert found is not None
        store.refresh(found, 2000.0, (("etag", '"y"'),), math.inf)
        return blob_file(digest)

    store._blob_file = revalidated_meanwhile  # type: ignore[method-assign]
    assert store.fill_memory(threading.Event()) == (0, 0)  # it would hold the entry as it was before
    store._blob_file = blob_file  # type: ignore[method-assign]
    assert store.lookup_hot("index:k") is None
    assert store.fill_memory(threading.Event()) == (1, 6)
    held = store.lookup_hot("index:k")
    assert held is not None and held[0].etag == '"y"'


def filled_in_order(store: Store) -> list[str]:
    """Fill `store`'s memory, returning the keys in the order the fill put them in."""
    read: list[str] = []
    hot = store._hot
    assert hot is not None
    put_if_room = hot.put_if_room

    def noting(entry: Entry, body: bytes) -> bool:
        read.append(entry.key)
        return put_if_room(entry, body)

    hot.put_if_room = noting  # type: ignore[method-assign]
    store.fill_memory(threading.Event())
    hot.put_if_room = put_if_room  # type: ignore[method-assign]
    return read


def test_a_start_after_a_clean_stop_fills_memory_from_what_the_last_run_held(tmp_path: Path) -> None:
    keys = ["index:a", "index:b", "crate:c", "crate:d"]
    first = Store(tmp_path / "c", hot_bytes=MIB)
    for key in keys:
        first.put(key, key.encode() * 10, **META)
    used = ["crate:d", "index:a", "crate:c"]  # this run's order; its access times are too recent to be noted
    for key in used:
        assert first.lookup_hot(key) is not None
    first.delete("index:b")  # (not held now: not kept)
    first.put_meta(first.memory_order_meta())  # as `serve` does when it stops
    first.close()

    listed = Store(tmp_path / "c", hot_bytes=MIB)
    meta = listed.get_meta(MEMORY_ORDER_META)
    assert meta is not None and [key for key, _ in json.loads(meta)] == list(reversed(used))
    listed.close()
    Store(tmp_path / "c").put("crate:c", b"replaced since", **META)  # another process changed one meanwhile

    store = Store(tmp_path / "c", hot_bytes=MIB)
    store._small_entries = None  # type: ignore[assignment,method-assign]  # the index is not listed
    assert filled_in_order(store) == ["crate:d", "index:a", "crate:c"]  # the last run's order
    assert store.lookup_hot("index:a") == (store.peek("index:a"), b"index:a" * 10)
    assert store.lookup_hot("crate:c") == (store.peek("crate:c"), b"replaced since")  # the index's, as it is now
    assert store.get_meta(MEMORY_ORDER_META) is None, "a start that then crashes must not reuse it"
    store.close()

    again = Store(tmp_path / "c", hot_bytes=MIB)  # no order kept: the index is listed, as after a crash
    assert sorted(filled_in_order(again)) == ["crate:c", "crate:d", "index:a"]


def test_a_kept_memory_order_is_cut_to_the_newest_that_fit_and_an_unreadable_one_ignored(tmp_path: Path) -> None:
    first = Store(tmp_path / "c", hot_bytes=MIB)
    for key in ("crate:a", "crate:b", "crate:c"):
        first.put(key, b"x" * 1000, **META)
        assert first.lookup_hot(key) is not None
    first.put_meta(first.memory_order_meta())
    first.close()

    smaller = Store(tmp_path / "c", hot_bytes=2500)  # started with less memory: room for two
    assert filled_in_order(smaller) == ["crate:b", "crate:c"]
    smaller.put_meta({MEMORY_ORDER_META: "not json"})
    smaller.close()

    store = Store(tmp_path / "c", hot_bytes=MIB)
    assert sorted(filled_in_order(store)) == ["crate:a", "crate:b", "crate:c"]  # listed instead


def test_the_proxys_own_reads_do_not_change_the_order_memory_keeps(tmp_path: Path) -> None:
    """A crate's download reads its index file (the cksum): that is not a client's use of the index file,
    so it does not move it past the crates cargo asked for after it."""
    store = Store(tmp_path / "c", hot_bytes=MIB)
    for key in ("index:se/rd/serde", "crate:serde"):
        store.put(key, key.encode(), **META)
    assert store.lookup_hot("index:se/rd/serde", answered=False) is not None  # the proxy's own read
    assert [key for key, _ in json.loads(store.memory_order_meta()[MEMORY_ORDER_META])] == [
        "crate:serde",
        "index:se/rd/serde",
    ]
    assert store.lookup_hot("index:se/rd/serde") is not None  # a client's
    assert json.loads(store.memory_order_meta()[MEMORY_ORDER_META])[0][0] == "index:se/rd/serde"
