"""Hits answered on a client's HTTP/2 connection without a flow.

A GET that memory answers at once (a stored crate, a fresh index file, a stale one while upstream cannot be
asked: `CacheService.answer_at_once`) still went through all of mitmproxy's per-request machinery: a flow
and its server connection object, a child context, an HttpStream layer, the `requestheaders` hook as a task,
and the response handed back down the layers as three events. In a py-spy profile of a warm cargo run with
upstream gone (every request such a hit) that machinery was most of the proxy's CPU outside h2, TLS and the
event loop.

`Http2Server.handle_h2_event` now offers each complete GET on a client's HTTP/2 connection to the answerer
registered here (`RuststashAddon.answer_from_memory`), which counts and logs it as its flow would have been
counted and logged; the response goes out on the HTTP/2 connection right there, as mitmproxy would send it
(the same header normalisation, the body in frames under the client's flow-control window, buffered past
it). Anything else takes the flow path, untouched: a request with a body, a method other than GET, one
without `:authority`, one mitmproxy's checks refuse, a PASS, a miss, a stale entry upstream must be asked
about.

Why skipping the flow is right here, and only here:
- A client's HTTP/2 connection exists only inside an intercepted CONNECT tunnel (the proxy's own port speaks
  HTTP/1; HTTP/2 is chosen by ALPN after TLS), and ProxyAuth checked that CONNECT. Its `requestheaders`
  would only copy the tunnel's credentials onto the flow. The answerer is only asked on a connection whose
  client side is TLS.
- The other addons that `serve` loads do nothing per request (tests/test_mitm_tuning.py checks the hooks
  they have).
- One read of a connection answers at most ANSWERS_PER_READ requests here: twice the streams a client may
  have open at once (h2's MAX_CONCURRENT_STREAMS of 100, which cargo keeps to), so a client that keeps to it
  is never cut short. The requests after that in the same read take the flow path, whose hook completions
  hand the loop to other connections (mitm_tuning INLINE_SLICE): a client that floods one read with cheap
  requests gets no more of the event loop, and no more of its answers buffered at once, than before this
  path existed.

Re-check when mitmproxy is upgraded, with mitm_tuning's patches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import h2.events
from mitmproxy.net.http.validate import _valid_header_name  # mitmproxy's own check of header names
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.layers.http import _http2
from mitmproxy.proxy.layers.http._http_h2 import BufferedH2Connection

from .replies import ClientRequest, header_dict

# An answer sent here: status, header fields (as mitmproxy's Response would hold them), body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
# Asked with the request and the time it was received (time.time()).
Answerer = Callable[[ClientRequest, float], Answer | None]

# How many requests of one read of a client's connection may be answered here (see above).
ANSWERS_PER_READ = 200
_INSTALLED = "_ruststash_h2_answers"
_LEFT = "_ruststash_answers_left"
_answerer: Answerer | None = None
# Headers that frame a message body: mitmproxy's validate_headers weighs them (a GET without a body has none).
_FRAMING_HEADERS = ("transfer-encoding", "content-length")


def register(answerer: Answerer | None) -> None:
    """The answerer asked from now on (None: none, every request takes the flow path)."""
    global _answerer
    _answerer = answerer


def install() -> None:
    server = _http2.Http2Server
    if getattr(server, _INSTALLED, False):
        return
    handle_event = server._handle_event
    handle_h2_event = server.handle_h2_event

    def counting_reads(self: _http2.Http2Server, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived):
            setattr(self, _LEFT, ANSWERS_PER_READ)
        return handle_event(self, event)

    def answering_hits(self: _http2.Http2Server, event: h2.events.Event) -> layer.CommandGenerator[bool]:
        answerer = _answerer
        if isinstance(event, h2.events.RequestReceived) and answerer is not None and answered(self, event, answerer):
            return False
        return (yield from handle_h2_event(self, event))

    server._handle_event = counting_reads  # type: ignore[method-assign]
    server.handle_h2_event = answering_hits  # type: ignore[method-assign]
    setattr(server, _INSTALLED, True)


def answered(server: _http2.Http2Server, event: h2.events.RequestReceived, answerer: Answerer) -> bool:
    """Whether the request of `event` was answered here. False: it is left to the flow path."""
    left: int = getattr(server, _LEFT, 0)
    if not event.stream_ended or not server.context.client.tls or left <= 0:
        return False
    request = complete_get(event.headers, server.context.options.validate_inbound_headers)
    if request is None or not server.is_open_for_us(event.stream_id):
        return False
    answer = answerer(request, time.time())
    if answer is None:
        return False
    setattr(server, _LEFT, left - 1)
    send_response(server.h2_conn, event.stream_id, *answer)
    return True


def complete_get(headers: Sequence[tuple[bytes, bytes]], validate_inbound_headers: bool) -> ClientRequest | None:
    """The request of these HTTP/2 headers, as `addon.client_request` would make it of mitmproxy's request, if
    it is a GET with an authority and an http(s) scheme that passes mitmproxy's checks; None for anything
    else. (A request with a Transfer-Encoding or Content-Length header is left to the flow path, whose
    checks of those mitmproxy makes itself.)"""
    try:
        host, port, method, scheme, authority, path, fields = _http2.parse_h2_request_headers(headers)
    except ValueError:
        return None  # the flow path refuses it as mitmproxy does
    if method != b"GET" or not authority or scheme not in (b"https", b"http"):
        return None
    if validate_inbound_headers and not all(_valid_header_name.match(name) for name, _ in fields.fields):
        return None
    merged = header_dict(fields.fields)
    if any(name in merged for name in _FRAMING_HEADERS):
        return None
    return ClientRequest(
        method="GET",
        scheme=scheme.decode(),
        host=host.lower(),  # mitmproxy's pretty_host: the authority's host, as parsed here
        port=port,
        path=path.decode("utf-8", "surrogateescape"),
        headers=merged,
    )


def send_response(
    conn: BufferedH2Connection, stream_id: int, status: int, fields: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Send a response on a stream as mitmproxy's HttpStream and Http2Server would: headers normalised as for
    a response not from HTTP/2, the stream ended with the headers when there is no body."""
    headers = _http2.normalize_h1_headers([(b":status", b"%d" % status), *fields], False)
    conn.send_headers(stream_id, headers, end_stream=not body)
    if body:
        # The last frame's worth ends the stream: no empty DATA frame after it, as mitmproxy would send.
        # (BufferedH2Connection keeps the end of the stream only on a piece no larger than a frame.)
        view = memoryview(body)
        last = len(body) - 1 - (len(body) - 1) % conn.max_outbound_frame_size
        if last:
            conn.send_data(stream_id, view[:last])  # type: ignore[arg-type]  # h2 takes bytes | memoryview
        conn.send_data(stream_id, view[last:], end_stream=True)  # type: ignore[arg-type]
