"""The mitmproxy addon: glue between flows and the cache service. It makes no cache decisions itself."""

from __future__ import annotations

import logging
import time

from mitmproxy import http
from mitmproxy.net.http import status_codes

from .access_log import log_request
from .policy import Kind
from .service import CacheService, ClientRequest, Outcome, Reply, error_reply
from .upstream import UpstreamMap

logger = logging.getLogger(__name__)

_PASS_MARK = "ruststash_pass"


def client_request(flow: http.HTTPFlow) -> ClientRequest:
    request = flow.request
    headers: dict[str, str] = {}
    for name, value in request.headers.items(multi=True):
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return ClientRequest(
        method=request.method,
        scheme=request.scheme,
        host=request.pretty_host.lower(),
        port=request.port,
        path=request.path,
        headers=headers,
    )


def make_response(reply: Reply) -> http.Response:
    fields = [(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in reply.headers]
    if reply.status != 304:
        fields.append((b"content-length", str(len(reply.body)).encode()))
    fields.append((b"x-cache", reply.outcome.value.encode()))
    if reply.outcome is Outcome.STALE:
        fields.append((b"warning", b'110 ruststash "Response is Stale"'))
    now = time.time()
    return http.Response(
        b"HTTP/1.1",
        reply.status,
        status_codes.RESPONSES.get(reply.status, "").encode(),
        http.Headers(fields),
        reply.body,
        None,
        now,
        now,
    )


class RuststashAddon:
    def __init__(self, service: CacheService, upstream_map: UpstreamMap) -> None:
        self.service = service
        self.upstream_map = upstream_map

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        request = client_request(flow)
        decision = self.service.decide(request)
        if decision.kind is Kind.PASS:
            self._forward(flow, request)
            return
        try:
            reply = await self.service.handle(decision, request)
        except Exception as exc:  # nothing escapes a hook: a bug becomes a 500 and one log line
            logger.exception("internal error handling %s", request.url)
            reply = error_reply(500, f"internal error: {type(exc).__name__}")
        flow.response = make_response(reply)
        log_request(
            method=request.method,
            host=request.host,
            path=request.path,
            outcome=reply.outcome.value,
            status=reply.status,
            size=len(reply.body),
            seconds=time.time() - flow.request.timestamp_start,
            note=reply.note,
        )

    def _forward(self, flow: http.HTTPFlow, request: ClientRequest) -> None:
        """Let mitmproxy forward a request it intercepted but we do not cache, to the mapped origin."""
        if not self.service.is_cached_host(request.host, request.port):
            return
        flow.metadata[_PASS_MARK] = True
        origin = self.upstream_map.origins(request.scheme, request.host, request.port)[0]
        if (origin.scheme, origin.host, origin.port) != (request.scheme, request.host, request.port):
            flow.request.scheme = origin.scheme
            flow.request.host = origin.host
            flow.request.port = origin.port
        if origin.path_prefix:
            flow.request.path = origin.path_prefix + flow.request.path

    def response(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.get(_PASS_MARK) or flow.response is None:
            return
        flow.response.headers["x-cache"] = Outcome.PASS.value
        log_request(
            method=flow.request.method,
            host=flow.request.pretty_host,
            path=flow.request.path,
            outcome=Outcome.PASS.value,
            status=flow.response.status_code,
            size=len(flow.response.raw_content or b""),
            seconds=time.time() - flow.request.timestamp_start,
        )

    def error(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.get(_PASS_MARK) or flow.error is None:
            return
        log_request(
            method=flow.request.method,
            host=flow.request.pretty_host,
            path=flow.request.path,
            outcome=Outcome.ERROR.value,
            status=None,
            size=0,
            seconds=time.time() - flow.request.timestamp_start,
            note=flow.error.msg,
        )
