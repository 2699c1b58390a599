"""The in-memory LRU of small bodies (pure bookkeeping; the Store's use of it is in test_store_memory)."""

from __future__ import annotations

import hashlib
from random import Random

from hypothesis import given
from hypothesis import strategies as st

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


def test_a_fill_read_oldest_first_is_ranked_newest_first_behind_what_clients_used_since() -> None:
    hot = HotBodies(budget=300, max_body=200)
    for key in ("oldest", "middle", "newest"):  # as a fill reads them: each goes in least recently used
        assert hot.put_if_room(entry(key, key.encode()[:1] * 100), key.encode()[:1] * 100)
    assert hot.get("oldest") is not None  # a client used it during the fill: it ranks above the fill
    hot.rank_filled(["newest", "middle", "oldest"])
    hot.put(entry("x", b"x" * 100), b"x" * 100)
    hot.put(entry("y", b"y" * 100), b"y" * 100)  # two drops: the fill's oldest unused ones first
    assert hot.peek("middle") is None and hot.peek("newest") is None
    assert hot.peek("oldest") is not None and hot.peek("x") is not None


def test_ranking_a_fill_skips_what_was_replaced_dropped_or_never_filled() -> None:
    hot = HotBodies(budget=300, max_body=200)
    assert hot.put_if_room(entry("a", b"a" * 100), b"a" * 100)
    assert hot.put_if_room(entry("b", b"b" * 100), b"b" * 100)
    hot.put(entry("b", b"B" * 100), b"B" * 100)  # replaced by a client's fetch: most recently used
    hot.discard("a")
    hot.rank_filled(["a", "b", "never"])
    hot.put(entry("c", b"c" * 150), b"c" * 150)
    assert hot.peek("b") == (entry("b", b"B" * 100), b"B" * 100)


def test_the_fill_takes_the_most_recently_used_small_entries_while_they_fit() -> None:
    candidates = [  # (key, size, last used), in the store's key order
        ("older", 100, 10.0),
        ("newest", 100, 30.0),
        ("large", 500, 40.0),  # over max_body: never
        ("middle", 100, 20.0),
        ("oldest", 10, 5.0),  # would fit, but comes after one that does not
    ]
    assert choose_for_memory(candidates, budget=220, max_body=200) == ["newest", "middle"]
    assert choose_for_memory(candidates, budget=310, max_body=200) == ["newest", "middle", "older", "oldest"]
    assert choose_for_memory(candidates, budget=99, max_body=200) == []
    assert choose_for_memory(iter(candidates), budget=10_000, max_body=1000)[0] == "large"  # any iterable


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300), max_size=40),
    budget=st.integers(min_value=0, max_value=2000),
    seed=st.randoms(use_true_random=False),
)
def test_the_streamed_choice_is_the_newest_run_that_fits(sizes: list[int], budget: int, seed: Random) -> None:
    """Whatever the order the store yields them in: the entries sorted newest first, taken while they fit."""
    used = list(range(len(sizes)))
    seed.shuffle(used)  # distinct times of last use
    candidates = [(f"k{i}", size, float(at)) for i, (size, at) in enumerate(zip(sizes, used, strict=True))]
    expected, room = [], budget
    for key, size, _ in sorted((c for c in candidates if c[1] <= 200), key=lambda c: -c[2]):
        if size > room:
            break
        expected.append(key)
        room -= size
    assert choose_for_memory(candidates, budget, max_body=200) == expected
