"""A body removed between its lookup and its read (a purge in another process while upstream revalidates a
large index file) is fetched anew, not answered 503. Real store, real upstream client, real origin on
localhost; the origin itself does the purge when the conditional request arrives."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from ruststash.metrics import Metrics
from ruststash.policy import Decision, Kind, Rule
from ruststash.replies import ClientRequest, Outcome
from ruststash.service import INLINE_BODY, CacheService
from ruststash.settings import CacheHost, Resilience
from ruststash.store import Store
from ruststash.upstream import Upstream, UpstreamMap

LINE = b'{"name":"big","vers":"1.0.%d","deps":[],"cksum":"%s","features":{},"yanked":false}\n'
BODY = b"".join(LINE % (i, b"0" * 64) for i in range(INLINE_BODY // 100 + 1000))  # over INLINE_BODY
ETAG = '"' + hashlib.sha256(BODY).hexdigest()[:16] + '"'
KEY = "index:localhost/bi/g/big"


async def test_a_body_purged_during_revalidation_is_fetched_again(tmp_path: Path) -> None:
    seen: list[str] = []

    async def index_file(request: web.Request) -> web.Response:
        if request.headers.get("if-none-match") == ETAG:
            seen.append("conditional")
            purged = Store(tmp_path / "cache", clean_tmp=False)  # `ruststash purge`, another process
            purged.remove_entries([KEY])
            purged.close()
            return web.Response(status=304, headers={"etag": ETAG, "cache-control": "max-age=0"})
        seen.append("full")
        return web.Response(body=BODY, headers={"etag": ETAG, "cache-control": "max-age=0"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", index_file)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "localhost", 0).start()
    port = runner.addresses[0][1]
    metrics = Metrics(CollectorRegistry())
    resilience = Resilience()
    upstream = Upstream(UpstreamMap({}), ssl.create_default_context(), "ruststash-test", resilience, metrics)
    await upstream.start()
    store = Store(tmp_path / "cache", hot_bytes=32 * 1024 * 1024)
    service = CacheService(store, upstream, (CacheHost("localhost"),), resilience, metrics)
    request = ClientRequest("GET", "http", "localhost", port, "/bi/g/big", {})
    decision = Decision(Kind.INDEX, KEY, Rule.REVALIDATE)
    try:
        first = await service.handle(decision, request)
        again = await service.handle(decision, request)
    finally:
        await upstream.close()
        await runner.cleanup()
        store.close()
    assert (first.status, first.outcome, first.body == BODY) == (200, Outcome.MISS, True), first.body[:300]
    assert seen == ["full", "conditional", "full"]  # revalidated, found purged, fetched whole again
    assert (again.status, again.outcome, again.body == BODY) == (200, Outcome.MISS, True)
