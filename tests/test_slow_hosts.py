from __future__ import annotations

import asyncio

from ruststash.slow_hosts import SlowHosts


def answered(fetch: asyncio.Future[object]) -> bool:
    return not fetch.cancelled() and fetch.exception() is None and fetch.result() == "answer"


async def settle(fetch: asyncio.Future[object], result: object) -> None:
    fetch.set_result(result)
    await asyncio.sleep(0)  # done callbacks run on the next turn of the loop


async def test_a_host_is_slow_until_a_fetch_to_it_is_answered() -> None:
    loop = asyncio.get_running_loop()
    hosts = SlowHosts(answered)
    assert not hosts.is_slow("a") and not hosts.needs_probe("a")
    first, second = loop.create_future(), loop.create_future()
    hosts.watch("a", first)
    hosts.watch("a", second)  # two requests ran past their deadline
    assert hosts.is_slow("a") and not hosts.needs_probe("a"), "a fetch is still out: no probe needed"
    assert hosts.hosts() == ("a",) and not hosts.is_slow("b")
    await settle(first, "answer")  # any watched fetch that is answered shows the host is back
    assert not hosts.is_slow("a")
    await settle(second, "failure")  # a late failure does not mark it slow again
    assert not hosts.is_slow("a")


async def test_a_failed_probe_asks_for_another() -> None:
    loop = asyncio.get_running_loop()
    hosts = SlowHosts(answered)
    probe = loop.create_future()
    hosts.watch("a", probe)
    await settle(probe, "failure")
    assert hosts.is_slow("a") and hosts.needs_probe("a")
    again = loop.create_future()
    hosts.watch("a", again)
    assert not hosts.needs_probe("a")
    again.cancel()
    await asyncio.sleep(0)
    assert hosts.needs_probe("a")


async def test_an_older_fetch_failing_does_not_drop_the_current_probe() -> None:
    loop = asyncio.get_running_loop()
    hosts = SlowHosts(answered)
    old, probe = loop.create_future(), loop.create_future()
    hosts.watch("a", old)
    hosts.watch("a", probe)
    await settle(old, "failure")
    assert not hosts.needs_probe("a"), "the current probe is still out"
    await settle(probe, "answer")
    assert not hosts.is_slow("a")
