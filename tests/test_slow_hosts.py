from __future__ import annotations

import asyncio

from ruststash.slow_hosts import PROBES, SlowHosts

DEADLINE = 3.0


def answered(fetch: asyncio.Future[object]) -> bool:
    return not fetch.cancelled() and fetch.exception() is None and fetch.result() == "answer"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def settle(fetch: asyncio.Future[object], result: object) -> None:
    fetch.set_result(result)
    await asyncio.sleep(0)  # done callbacks run on the next turn of the loop


async def test_a_host_is_slow_until_a_fetch_to_it_answers_in_time() -> None:
    loop, clock = asyncio.get_running_loop(), Clock()
    hosts = SlowHosts(answered, DEADLINE, clock)
    assert not hosts.is_slow("a") and not hosts.needs_probe("a")
    late, probe = loop.create_future(), loop.create_future()
    hosts.watch("a", late, started=clock.now - DEADLINE - 1)  # the request that waited in vain
    assert hosts.is_slow("a") and hosts.hosts() == ("a",) and not hosts.is_slow("b")
    clock.now += 10
    await settle(late, "answer")  # it answered, but 11 s after it began: still slow
    assert hosts.is_slow("a")
    hosts.watch("a", probe, started=clock.now)
    clock.now += 0.5
    await settle(probe, "answer")  # a refresh that answers within the deadline: the host is back
    assert not hosts.is_slow("a")


async def test_refreshes_of_a_slow_host_are_bounded_and_failures_free_their_slot() -> None:
    loop, clock = asyncio.get_running_loop(), Clock()
    hosts = SlowHosts(answered, DEADLINE, clock)
    fetches = [loop.create_future() for _ in range(PROBES)]
    for fetch in fetches:
        hosts.watch("a", fetch, started=clock.now)
    assert hosts.is_slow("a") and not hosts.needs_probe("a"), f"at most {PROBES} refreshes at a time"
    await settle(fetches[0], "failure")
    assert hosts.is_slow("a") and hosts.needs_probe("a"), "a failed refresh frees its slot, the host stays slow"
    fetches[1].cancel()
    await asyncio.sleep(0)
    assert hosts.is_slow("a")
    clock.now += 1
    await settle(fetches[2], "answer")
    assert not hosts.is_slow("a") and not hosts.needs_probe("a")
    await settle(fetches[3], "failure")  # a late failure does not mark it slow again
    assert not hosts.is_slow("a")


async def test_what_marked_a_host_is_kept_until_it_is_back() -> None:
    loop, clock = asyncio.get_running_loop(), Clock()
    hosts = SlowHosts(answered, DEADLINE, clock)
    refused, probe = loop.create_future(), loop.create_future()
    await settle(refused, "failure")
    hosts.watch("a", refused, started=clock.now, why="is not answering (a: cannot connect)")
    await asyncio.sleep(0)
    assert hosts.is_slow("a") and hosts.why("a") == "is not answering (a: cannot connect)"
    hosts.watch("a", probe, started=clock.now)  # a refresh of the marked host: the reason stays the first one
    assert hosts.why("a") == "is not answering (a: cannot connect)" and hosts.why("b") == ""
    await settle(probe, "answer")
    assert not hosts.is_slow("a") and hosts.why("a") == ""
    late = loop.create_future()
    hosts.watch("a", late, started=clock.now - DEADLINE - 1)
    assert hosts.why("a") == "is slow"
