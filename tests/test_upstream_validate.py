"""Upstream.get's `validate`: it decides whether the next origin is tried (a corrupt mirror), so it is asked
about every origin's answer but the last, which goes to the caller unchecked (the store checks a crate's
digest as it stores it: with a single origin the body is not hashed on the event loop as well)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from ruststash.metrics import Metrics
from ruststash.settings import Origin, Resilience
from ruststash.upstream import Upstream, UpstreamMap, UpstreamResponse


async def origin_serving(body: bytes) -> tuple[web.AppRunner, Origin]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, Origin("http", "127.0.0.1", runner.addresses[0][1], "")


@pytest.fixture
async def origins() -> AsyncIterator[tuple[Origin, Origin]]:
    corrupt, corrupt_origin = await origin_serving(b"corrupt")
    good, good_origin = await origin_serving(b"good")
    yield corrupt_origin, good_origin
    await corrupt.cleanup()
    await good.cleanup()


async def fetched(origins: tuple[Origin, ...]) -> tuple[bytes, list[bytes]]:
    asked: list[bytes] = []

    def validate(response: UpstreamResponse) -> str | None:
        asked.append(response.body)
        return "not the published digest" if response.body == b"corrupt" else None

    mapping = UpstreamMap({"static.crates.io": origins})
    upstream = Upstream(
        mapping, ssl.create_default_context(), "ruststash-test", Resilience(), Metrics(CollectorRegistry())
    )
    await upstream.start()
    try:
        response = await upstream.get("https://static.crates.io/crates/a/1.0.0/download", {}, validate=validate)
    finally:
        await upstream.close()
    return response.body, asked


async def test_a_rejected_answer_sends_the_request_to_the_next_origin(origins: tuple[Origin, Origin]) -> None:
    assert await fetched(origins) == (b"good", [b"corrupt"])  # the last origin's answer is not asked about


async def test_the_last_origins_answer_goes_to_the_caller_unchecked(origins: tuple[Origin, Origin]) -> None:
    assert await fetched(origins[:1]) == (b"corrupt", [])
