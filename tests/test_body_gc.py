from __future__ import annotations

from ruststash.body_gc import BodyCollector


def test_collects_after_every_so_many_bytes_answered() -> None:
    runs: list[int] = []
    collector = BodyCollector(every=100, collect=lambda: runs.append(1))
    for size in (40, 40, 0):
        collector.answered(size)
    assert runs == []
    collector.answered(20)  # 100 bytes since the start
    assert runs == [1] and collector.collections == 1
    collector.answered(99)
    assert collector.collections == 1
    collector.answered(500)  # one large body: one pass, and the count starts again
    assert collector.collections == 2
    collector.answered(99)
    assert collector.collections == 2
