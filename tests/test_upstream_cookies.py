"""The upstream client keeps no cookies: a proxy shared by many clients must not carry what upstream set
for one client's request into another's (entries are keyed by the client's own credentials, policy.scoped)."""

from __future__ import annotations

import ssl

from aiohttp import web
from prometheus_client import CollectorRegistry

from ruststash.metrics import Metrics
from ruststash.settings import Resilience
from ruststash.upstream import Upstream, UpstreamMap


async def test_a_cookie_upstream_sets_is_not_sent_with_later_requests() -> None:
    received: list[str | None] = []

    async def index_file(request: web.Request) -> web.Response:
        received.append(request.headers.get("cookie"))
        response = web.Response(text="{}")
        response.set_cookie("session", "for-the-first-client", path="/")
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", index_file)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0)  # a host name: cookie jars ignore cookies from IP addresses
    await site.start()
    port = runner.addresses[0][1]
    upstream = Upstream(
        UpstreamMap({}), ssl.create_default_context(), "ruststash-test", Resilience(), Metrics(CollectorRegistry())
    )
    await upstream.start()
    try:
        first = await upstream.get(f"http://localhost:{port}/se/rd/serde", {"cookie": "client=a"})
        second = await upstream.get(f"http://localhost:{port}/se/rd/serde", {})
    finally:
        await upstream.close()
        await runner.cleanup()
    assert first.status == second.status == 200
    assert received == ["client=a", None]
