"""The mitmproxy addon: glue between flows and the cache service. It makes no cache decisions itself."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass

from mitmproxy import http
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import server_hooks
from mitmproxy.tls import TlsData

from . import h2_answers, mitm_tuning
from .access_log import log_request
from .blobserver import BlobServer
from .body_gc import BodyCollector
from .egress import EgressPolicy, pinned_address, refusal
from .policy import Decision, Kind, client_protocol, is_registry_write
from .replies import STALE_WARNING, ClientRequest, Outcome, Reply, error_reply, header_dict
from .service import CacheService
from .upstream import UpstreamMap

logger = logging.getLogger(__name__)

_MARK = "ruststash"
_DECIDED = "ruststash.decided"  # (ClientRequest, Decision) from `requestheaders`, for `request`
_STALE_WARNING = (STALE_WARNING[0].encode(), STALE_WARNING[1].encode())
# What an HTTP/2 request is answered without a flow for even when memory cannot answer it at once (h2_answers):
# the cargo kinds, whose replies are always whole bodies in memory (never streamed from disk or forwarded).
ANSWERED_LATER = frozenset({Kind.CONFIG, Kind.INDEX, Kind.CRATE})


@dataclass(frozen=True)
class _Forwarded:
    """A flow mitmproxy forwards itself: PASS to the origin, or a streamed reply from the blob server."""

    outcome: Outcome
    kind: str
    host: str
    path: str
    size: int | None = None
    note: str = ""
    from_blobs: bool = False


def client_request(request: http.Request) -> ClientRequest:
    return ClientRequest(
        method=request.method,
        scheme=request.scheme,
        host=request.pretty_host.lower(),
        port=request.port,
        path=request.path,
        headers=header_dict(request.headers.fields),
    )


def response_fields(reply: Reply) -> list[tuple[bytes, bytes]]:
    """The header fields of the response `reply` is sent as."""
    fields = [(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in reply.headers]
    if reply.status != 304:
        fields.append((b"content-length", str(len(reply.body)).encode()))
    fields.append((b"x-cache", reply.outcome.value.encode()))
    if reply.outcome is Outcome.STALE:
        fields.append(_STALE_WARNING)
    return fields


def make_response(reply: Reply) -> http.Response:
    now = time.time()
    return http.Response(
        b"HTTP/1.1",
        reply.status,
        status_codes.RESPONSES.get(reply.status, "").encode(),
        http.Headers(response_fields(reply)),
        reply.body,
        None,
        now,
        now,
    )


class RuststashAddon:
    def __init__(
        self,
        service: CacheService,
        upstream_map: UpstreamMap,
        blobs: BlobServer,
        egress: EgressPolicy,
        http1_hosts: frozenset[str],
    ) -> None:
        self.service = service
        self.upstream_map = upstream_map
        self.blobs = blobs
        self.egress = egress
        self.http1_hosts = http1_hosts
        self.bodies = BodyCollector()

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """The egress guard: every connection mitmproxy makes for a client (tunnels, forwards) is checked."""
        if data.server.address is None or not (self.egress.tunnel_allow or self.egress.deny_private):
            return
        host, port = str(data.server.address[0]), int(data.server.address[1])
        addresses: list[str] = []
        if self.egress.deny_private and not self.egress.is_ours(host, port):
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
                addresses = [str(info[4][0]) for info in infos]
            except OSError:
                addresses = []  # refused: a later lookup by mitmproxy could give another answer
        reason = refusal(self.egress, host, port, addresses)
        if reason is not None:
            logger.warning("refused a connection to %s:%s: %s", host, port, reason)
            data.server.error = f"ruststash: {reason}"
        elif (pinned := pinned_address(self.egress, host, port, addresses)) is not None:
            data.server.address = (pinned, port)

    def tls_start_client(self, data: TlsData) -> None:
        """After mitmproxy's TlsConfig has set up the client side of an intercepted connection: hosts of
        large files speak HTTP/1.1 with their clients (see policy.DEFAULT_HTTP1_HOSTS, `serve --http1-host`)."""
        conn = data.ssl_conn
        if conn is None:
            return
        protocol = client_protocol(data.conn.sni, data.conn.alpn_offers, self.http1_hosts)
        app_data = conn.get_app_data()
        if protocol is not None and isinstance(app_data, dict) and app_data.get("client_alpn") is None:
            conn.set_app_data({**app_data, "client_alpn": protocol})

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Decide as soon as the head is in. What we do not cache on a cached host is pointed at its origin
        here: mitmproxy streams a large request body (a `cargo publish` upload) to the server as it reads it,
        connecting right after this hook, before the `request` hook."""
        if flow.response or flow.error or not flow.live:
            return
        request = client_request(flow.request)
        decision = self.service.decide(request)
        if decision.kind is Kind.PASS:
            if self.service.is_cached_host(request.host, request.port):
                self._forward(flow, request, _Forwarded(Outcome.PASS, Kind.PASS.value, request.host, request.path))
            return
        try:
            reply = self.service.answer_at_once(decision, request)
        except Exception:  # nothing escapes a hook: `request` then handles it the long way
            logger.exception("internal error answering %s from memory", request.url)
            reply = None
        if reply is not None:  # from memory: answered now, and the `request` hook has nothing left to do
            self._answer(flow, request, decision, reply)
            return
        flow.metadata[_DECIDED] = (request, decision)

    def answer_without_flow(
        self, request: ClientRequest, started: float
    ) -> h2_answers.Answer | h2_answers.AnswerWork | None:
        """A complete HTTP/2 GET (received at `started`), offered before mitmproxy makes a flow of it
        (h2_answers): the answer if memory answers it at once; else, for what is always answered with a whole
        body in memory (ANSWERED_LATER), the work that answers it as the `request` hook would. Each is counted
        and logged as its flow would be. None: the flow path takes it (and decides again; an internal error in
        `answer_at_once` is logged there)."""
        decision = self.service.decide(request)
        if decision.kind is Kind.PASS:
            return None
        try:
            reply = self.service.answer_at_once(decision, request)
        except Exception:
            return None
        if reply is not None:
            self._count(request, decision, reply, started)
            return reply.status, response_fields(reply), reply.body
        if decision.kind in ANSWERED_LATER:
            return self._answer_later(request, decision, started)
        return None

    async def _answer_later(self, request: ClientRequest, decision: Decision, started: float) -> h2_answers.Answer:
        reply = await self._handled(request, decision)
        if reply.streamed or reply.forward:  # not for ANSWERED_LATER's kinds; a client still gets an answer
            if reply.file is not None:
                reply.file.close()
            logger.error("internal error: %s was answered with a streamed or forwarded reply", request.url)
            reply = error_reply(500, "internal error: a reply that cannot be sent here")
        self._count(request, decision, reply, started)
        return reply.status, response_fields(reply), reply.body

    async def _handled(self, request: ClientRequest, decision: Decision) -> Reply:
        try:
            return await self.service.handle(decision, request)
        except Exception as exc:  # nothing escapes a hook: a bug becomes a 500 and one log line
            logger.exception("internal error handling %s", request.url)
            return error_reply(500, f"internal error: {type(exc).__name__}")

    async def request(self, flow: http.HTTPFlow) -> None:
        decided: tuple[ClientRequest, Decision] | None = flow.metadata.pop(_DECIDED, None)
        if decided is None or flow.response or flow.error or not flow.live:
            return  # not ours to answer (PASS), or already answered
        request, decision = decided
        reply = await self._handled(request, decision)
        if reply.streamed:
            self._stream(flow, request, reply, decision.kind.value)
            return
        if reply.forward:
            self._forward(flow, request, _Forwarded(reply.outcome, decision.kind.value, request.host, request.path))
            return
        self._answer(flow, request, decision, reply)

    def _answer(self, flow: http.HTTPFlow, request: ClientRequest, decision: Decision, reply: Reply) -> None:
        """Set the flow's response to `reply` (whole, in memory) and count and log it."""
        flow.response = make_response(reply)
        mitm_tuning.mark_answered(flow)  # no hook of the flow after this one has anything to do for it
        self.bodies.answered(len(reply.body))  # the finished flow holds the body until a collection
        self._count(request, decision, reply, flow.request.timestamp_start)

    def _count(self, request: ClientRequest, decision: Decision, reply: Reply, started: float) -> None:
        self.service.metrics.request(decision.kind.value, reply.outcome.value, len(reply.body))
        log_request(
            method=request.method,
            host=request.host,
            path=request.path,
            outcome=reply.outcome.value,
            status=reply.status,
            size=len(reply.body),
            seconds=time.time() - started,
            note=reply.note,
        )

    def _stream(self, flow: http.HTTPFlow, request: ClientRequest, reply: Reply, kind: str) -> None:
        """Point the flow at the loopback blob server; mitmproxy then streams the body to the client."""
        flow.metadata[_MARK] = _Forwarded(
            reply.outcome, kind, request.host, request.path, reply.size, reply.note, from_blobs=True
        )
        flow.request.scheme = "http"
        flow.request.host = "127.0.0.1"
        flow.request.port = self.blobs.port
        flow.request.path = self.blobs.issue(reply)

    def _forward(self, flow: http.HTTPFlow, request: ClientRequest, forwarded: _Forwarded) -> None:
        """Let mitmproxy forward an intercepted request to the mapped origin (and stream the answer): what we
        do not cache, and what we cannot store just now."""
        flow.metadata[_MARK] = forwarded
        origin = self.upstream_map.origins(request.scheme, request.host, request.port)[0]
        if (origin.scheme, origin.host, origin.port) != (request.scheme, request.host, request.port):
            flow.request.scheme = origin.scheme
            flow.request.host = origin.host
            flow.request.port = origin.port
        if origin.path_prefix:
            flow.request.path = origin.path_prefix + flow.request.path

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        forwarded = flow.metadata.get(_MARK)
        if forwarded is None or flow.response is None:
            return
        flow.response.stream = True
        if not forwarded.from_blobs:  # an upstream's own X-Cache (a CDN's) says nothing about ours
            flow.response.headers["x-cache"] = forwarded.outcome.value

    def response(self, flow: http.HTTPFlow) -> None:
        forwarded = flow.metadata.get(_MARK)
        if forwarded is None or flow.response is None:
            return
        if 200 <= flow.response.status_code < 300 and is_registry_write(flow.request.method, forwarded.path):
            self.service.registry_written()
        length = flow.response.headers.get("content-length", "")
        size = int(length) if length.isdigit() else (forwarded.size or 0)
        outcome = flow.response.headers.get("x-cache", forwarded.outcome.value)
        self.service.metrics.request(forwarded.kind, outcome, size)
        log_request(
            method=flow.request.method,
            host=forwarded.host,
            path=forwarded.path,
            outcome=outcome,
            status=flow.response.status_code,
            size=size,
            seconds=time.time() - flow.request.timestamp_start,
            note=forwarded.note,
        )

    def error(self, flow: http.HTTPFlow) -> None:
        forwarded = flow.metadata.get(_MARK)
        if forwarded is None or flow.error is None:
            return
        self.service.metrics.request(forwarded.kind, Outcome.ERROR.value, 0)
        log_request(
            method=flow.request.method,
            host=forwarded.host,
            path=forwarded.path,
            outcome=Outcome.ERROR.value,
            status=None,
            size=0,
            seconds=time.time() - flow.request.timestamp_start,
            note=flow.error.msg,
        )
