"""The in-memory LRU of small bodies (pure bookkeeping; the Store's use of it is in test_store_memory)."""

from __future__ import annotations

import hashlib

from ruststash.hot_bodies import HotBodies, choose_for_memory
from ruststash.store import Entry


def entry(key: str, body: bytes) -> Entry:
    return Entry(key, hashlib.sha256(body).hexdigest(), len(body), 200, (), 0.0, 0.0)


def test_least_recently_used_bodies_go_first_to_stay_within_the_budget() -> None:
    hot = HotBodies(budget=300, max_body=200)
    for key in ("a", "b", "c"):
        hot.put(entry(key, key.encode() * 100), key.encode() * 100)
    assert hot.size == 300 and len(hot) == 3
    assert hot.get("a") is not None  # used again: "b" is now the oldest
    hot.put(entry("d", b"d" * 150), b"d" * 150)
    assert hot.get("b") is None and hot.get("c") is None
    assert hot.get("a") is not None and hot.get("d") is not None
    assert hot.size == 250


def test_large_bodies_and_bodies_that_do_not_match_their_entry_are_not_held() -> None:
    hot = HotBodies(budget=1000, max_body=100)
    hot.put(entry("big", b"x" * 101), b"x" * 101)
    hot.put(entry("short", b"y" * 50), b"y" * 49)
    assert len(hot) == 0 and hot.size == 0
    assert HotBodies(budget=10).max_body == 10  # a body never exceeds the whole budget


def test_a_new_body_for_a_key_replaces_the_old_and_discard_can_name_the_body() -> None:
    hot = HotBodies(budget=1000)
    old, new = entry("k", b"old"), entry("k", b"newer")
    hot.put(old, b"old")
    hot.put(new, b"newer")
    assert hot.get("k") == (new, b"newer") and hot.size == 5
    hot.discard("k", old.digest)  # names a body no longer held: nothing happens
    assert hot.get("k") == (new, b"newer")
    hot.discard("k", new.digest)
    assert hot.get("k") is None and hot.size == 0
    hot.discard("missing")


def test_a_start_up_fill_goes_behind_what_clients_used_and_never_drops_anything() -> None:
    hot = HotBodies(budget=300, max_body=200)
    hot.put(entry("asked", b"a" * 100), b"a" * 100)
    assert hot.put_if_room(entry("old", b"o" * 100), b"o" * 100)
    assert not hot.put_if_room(entry("asked", b"A" * 100), b"A" * 100)  # held already: left as it is
    assert not hot.put_if_room(entry("too-big", b"t" * 150), b"t" * 150)  # would need a drop
    assert not hot.put_if_room(entry("short", b"s" * 10), b"s" * 9)
    assert hot.get("asked") == (entry("asked", b"a" * 100), b"a" * 100)
    hot.put(entry("new", b"n" * 150), b"n" * 150)  # the filled one is the least recently used
    assert hot.get("old") is None and hot.get("asked") is not None and hot.get("new") is not None


def test_the_fill_takes_the_most_recently_used_small_entries_that_fit() -> None:
    candidates = [
        (entry("older", b"1" * 100), 10.0),
        (entry("newest", b"2" * 100), 30.0),
        (entry("large", b"3" * 500), 40.0),  # over max_body: never
        (entry("middle", b"4" * 150), 20.0),  # does not fit beside "newest": skipped, smaller ones may
        (entry("tiny", b"5" * 10), 5.0),
    ]
    chosen = choose_for_memory(candidates, budget=220, max_body=200)
    assert [e.key for e in chosen] == ["newest", "older", "tiny"]
