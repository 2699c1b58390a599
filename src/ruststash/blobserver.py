"""A loopback HTTP server that streams stored bodies and downloads in progress to mitmproxy.

mitmproxy holds a body set by an addon whole in memory (a 300 MB archive would cost 1 GB or more). So for
large bodies the addon points the flow at this server instead, with a one-time ticket, and mitmproxy
streams the answer through to the client: stored files go out with sendfile (and Range support from
aiohttp's FileResponse); a download in progress is read from its temp file as it grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .errors import UpstreamError
from .freshness import CONDITIONAL_HEADERS, range_applies
from .replies import STALE_WARNING, Outcome, Reply

logger = logging.getLogger(__name__)

TICKET_TTL = 120.0


class BlobServer:
    def __init__(self) -> None:
        self._tickets: dict[str, tuple[float, Reply]] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/t/{token}", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server) and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for _, reply in self._tickets.values():
            _discard(reply)
        self._tickets.clear()

    def issue(self, reply: Reply) -> str:
        """A path on this server that answers `reply` once."""
        now = time.monotonic()
        for token in [t for t, (issued, _) in self._tickets.items() if now - issued > TICKET_TTL]:
            _discard(self._tickets.pop(token)[1])  # its client never came for it
        token = secrets.token_urlsafe(24)
        self._tickets[token] = (now, reply)
        return f"/t/{token}"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        ticket = self._tickets.pop(request.match_info["token"], None)
        if ticket is None:
            return web.Response(status=404, text="ruststash: unknown or used ticket\n")
        reply = ticket[1]
        headers = {k: v for k, v in reply.headers}
        headers["x-cache"] = reply.outcome.value
        if reply.outcome is Outcome.STALE:
            headers[STALE_WARNING[0]] = STALE_WARNING[1]
        if reply.file is not None:
            # Sent (and its handle closed) here, not after we return: the handle must outlive the sending.
            try:
                stored = _SentInHandler(reply.file.path, headers=headers)
                with contextlib.suppress(ConnectionError):  # mitmproxy dropped it (its client went away)
                    await stored.prepare(_unconditional(request, reply))
                return stored
            finally:
                reply.file.close()
        assert reply.fill is not None
        response = web.StreamResponse(status=reply.status, headers=headers)
        if reply.size is not None:
            response.content_length = reply.size
        try:
            await response.prepare(request)
            async for chunk in reply.fill.chunks():
                await response.write(chunk)
            await response.write_eof()
        except UpstreamError as exc:
            # Too late for an error status: cut the transfer so the client sees it fail, never a bad body.
            logger.warning("cut a download short for the client: %s", exc.reason)
            if request.transport is not None:
                request.transport.abort()
            return response
        except ConnectionError:
            # The client went away; the download itself goes on (other clients, and the store, want it).
            return response
        return response


def _unconditional(request: web.Request, reply: Reply) -> web.Request:
    """The client's request as FileResponse is to see it: without its conditions, which the service has
    already weighed against the stored validators (a 304 never comes here), and without its Range if its
    If-Range does not name the stored body. FileResponse would weigh them against its own validators, made
    from the blob file's mtime and size, which say nothing of which body the client holds."""
    stored = dict(reply.headers)
    keep_range = range_applies(request.headers, stored.get("etag"), stored.get("last-modified"))
    if not keep_range or any(name in request.headers for name in CONDITIONAL_HEADERS):
        drop = CONDITIONAL_HEADERS if keep_range else (*CONDITIONAL_HEADERS, "range")
        headers = request.headers.copy()
        for name in drop:
            headers.popall(name, None)
        return request.clone(headers=headers)
    return request


class _SentInHandler(web.FileResponse):
    """A FileResponse that the handler sends itself (so that the handle it reads is closed afterwards).
    aiohttp prepares whatever a handler returns once more, which a FileResponse would take as a new send:
    only the first call sends (a send cut short by a closed connection is not tried again).

    It keeps the stored body's validators (given in its headers): FileResponse would put its own over them,
    made from the blob file, so a client would see other validators than for the same body from memory."""

    _sending = False

    # FileResponse sets both from the blob file as it sends: those settings are ignored.
    etag = property(web.StreamResponse.etag.fget, lambda self, value: None)  # type: ignore[attr-defined]
    last_modified = property(web.StreamResponse.last_modified.fget, lambda self, value: None)  # type: ignore[attr-defined]

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._sending:
            return None
        self._sending = True
        return await super().prepare(request)


def _discard(reply: Reply) -> None:
    if reply.file is not None:
        reply.file.close()
