from __future__ import annotations

from ruststash.breaker import Breaker, State


def test_opens_after_threshold_and_probes_once_after_backoff() -> None:
    b = Breaker(threshold=3, base_backoff=10, max_backoff=35)
    for t in (0.0, 1.0):
        b.record_failure(t)
        assert b.allow(t)
    b.record_failure(2.0)
    assert b.state(2.0) is State.OPEN and not b.allow(5.0) and b.retry_in(5.0) == 7.0
    assert b.allow(12.0), "half open: one probe"
    assert not b.allow(12.1), "only one probe at a time"
    b.record_failure(12.5)  # the probe failed: open again, twice as long
    assert not b.allow(32.0) and b.allow(32.6)
    b.record_failure(33.0)
    assert b.open_until == 33.0 + 35.0, "the backoff is capped"


def test_success_closes_and_resets_backoff() -> None:
    b = Breaker(threshold=1, base_backoff=10, max_backoff=100)
    b.record_failure(0.0)
    b.record_failure(0.0)
    assert b.allow(100.0)
    b.record_success()
    assert b.state(100.0) is State.CLOSED and b.backoff == 10
    b.record_failure(200.0)
    assert b.open_until == 210.0
