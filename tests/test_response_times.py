from __future__ import annotations

import pytest

from ruststash.response_times import FACTOR, FLOOR, META_PREFIX, SAMPLES, ResponseTimes

ORIGIN = "https://index.crates.io:443"


def test_without_answers_the_wait_is_the_cap() -> None:
    assert ResponseTimes().deadline(ORIGIN, 3.0) == 3.0


def test_a_fast_origin_gets_the_floor_a_slow_one_the_cap() -> None:
    times = ResponseTimes()
    times.record(ORIGIN, 0.005)
    assert times.deadline(ORIGIN, 3.0) == FLOOR
    assert times.deadline(ORIGIN, FLOOR / 2) == FLOOR / 2  # never more than --stale-after
    times.record(ORIGIN, 0.6)
    assert times.deadline(ORIGIN, 3.0) == pytest.approx(FACTOR * 0.6)
    times.record(ORIGIN, 2.0)  # a satellite link
    assert times.deadline(ORIGIN, 3.0) == 3.0
    assert times.deadline("https://static.crates.io:443", 3.0) == 3.0  # per origin


def test_only_recent_answers_count() -> None:
    times = ResponseTimes()
    times.record(ORIGIN, 2.0)
    for _ in range(SAMPLES - 1):
        times.record(ORIGIN, 0.01)
    assert times.deadline(ORIGIN, 10.0) == pytest.approx(FACTOR * 2.0)
    times.record(ORIGIN, 0.01)  # the slow one has aged out
    assert times.deadline(ORIGIN, 10.0) == FLOOR


def test_kept_across_restarts_and_bad_values_ignored() -> None:
    times = ResponseTimes()
    times.record(ORIGIN, 0.5)
    times.record(ORIGIN, 0.02)
    times.record("https://bad:443", float("nan"))
    times.record("https://bad:443", -1.0)
    meta = times.to_meta()
    assert meta == {f"{META_PREFIX}{ORIGIN}": "0.500000"}
    restored = ResponseTimes()
    unreadable = {f"{META_PREFIX}https://x:443": "soon", f"{META_PREFIX}https://y:443": "1e9", "other": "1"}
    restored.restore({**meta, **unreadable})
    assert restored.to_meta() == meta
    assert restored.deadline(ORIGIN, 3.0) == pytest.approx(FACTOR * 0.5)
