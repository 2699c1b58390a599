"""Requests on a client's HTTP/2 connection answered without a flow.

A GET that memory answers at once (a stored crate, a fresh index file, a stale one while upstream cannot be
asked: `CacheService.answer_at_once`) still went through all of mitmproxy's per-request machinery: a flow
and its server connection object, a child context, an HttpStream layer, the `requestheaders` hook as a task,
and the response handed back down the layers as three events. In a py-spy profile of a warm cargo run with
upstream gone (every request such a hit) that machinery was most of the proxy's CPU outside h2, TLS and the
event loop.

`Http2Server.handle_h2_event` now offers each complete GET on a client's HTTP/2 connection to the answerer
registered here (`RuststashAddon.answer_without_flow`), which counts and logs it as its flow would have been
counted and logged. Its answer is one of:
- the answer itself: it goes out on the HTTP/2 connection right there, as mitmproxy would send it (the same
  header normalisation, the body in frames under the client's flow-control window, buffered past it);
- the work that makes the answer (an awaitable: a miss, or a revalidation, of an index file, config.json or
  a crate, whose answer is always a whole body in memory): it runs as a task, and the layer asks for a
  wake-up when it is done (`AnswerLater`, mitmproxy's own RequestWakeup, which the HTTP layers route back to
  the layer that asked). The connection handler's wake-up waits for that work instead of a timer, with its
  idle-timeout watchdog disarmed as it is while a flow's hook runs; the wake-up sends the answer on the stream,
  if the client still has it open. A client that resets the stream or closes the connection meanwhile is
  simply not answered (mitmproxy cancels the wake-ups of a closed connection; the work itself is not cancelled,
  as a flow's hook is not: its fetch may serve others);
- None: the flow path takes it, untouched, as it takes a request with a body, a method other than GET, one
  without `:authority`, one mitmproxy's checks refuse, a PASS, a toolchain file.

Why skipping the flow is right here, and only here:
- A client's HTTP/2 connection exists only inside an intercepted CONNECT tunnel (the proxy's own port speaks
  HTTP/1; HTTP/2 is chosen by ALPN after TLS), and ProxyAuth checked that CONNECT. Its `requestheaders`
  would only copy the tunnel's credentials onto the flow. The answerer is only asked on a connection whose
  client side is TLS.
- The other addons that `serve` loads do nothing per request (tests/test_mitm_tuning.py checks the hooks
  they have).
- One read of a connection answers or starts at most ANSWERS_PER_READ requests here: twice the streams a
  client may have open at once (h2's MAX_CONCURRENT_STREAMS of 100, which cargo keeps to), so a client that
  keeps to it is never cut short. The requests after that in the same read take the flow path, whose hook
  completions hand the loop to other connections (mitm_tuning INLINE_SLICE): a client that floods one read
  with cheap requests gets no more of the event loop, and no more of its answers buffered at once, than
  before this path existed.

Re-check when mitmproxy is upgraded, with mitm_tuning's patches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import h2.errors
import h2.events
from mitmproxy.net.http.validate import _valid_header_name  # mitmproxy's own check of header names
from mitmproxy.proxy import commands, events, layer, server
from mitmproxy.proxy.layers.http import _http2
from mitmproxy.proxy.layers.http._http_h2 import BufferedH2Connection

from .replies import ClientRequest, header_dict
from .tasks import spawn

# An answer sent here: status, header fields (as mitmproxy's Response would hold them), body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
# The work that makes an answer (it must not raise: its own errors are answers too).
AnswerWork = Coroutine[Any, Any, Answer]
# Asked with the request and the time it was received (time.time()): the answer, the work that makes it, or
# None (the flow path).
Answerer = Callable[[ClientRequest, float], Answer | AnswerWork | None]

# How many requests of one read of a client's connection may be answered here (see above).
ANSWERS_PER_READ = 200
_INSTALLED = "_ruststash_h2_answers"
_WAKEUP_INSTALLED = "_ruststash_answer_later"
_LEFT = "_ruststash_answers_left"
_answerer: Answerer | None = None
# Headers that frame a message body: mitmproxy's validate_headers weighs them (a GET without a body has none).
_FRAMING_HEADERS = ("transfer-encoding", "content-length")


def register(answerer: Answerer | None) -> None:
    """The answerer asked from now on (None: none, every request takes the flow path)."""
    global _answerer
    _answerer = answerer


class AnswerLater(commands.RequestWakeup):
    """A wake-up for the layer that yields it once `work` is done (see `waking_when_done`), not after a delay:
    then `work`'s answer goes out on `stream_id`."""

    def __init__(self, work: asyncio.Future[Answer], stream_id: int) -> None:
        super().__init__(0.0)
        self.work = work
        self.stream_id = stream_id


def install() -> None:
    _install_wakeups()
    server = _http2.Http2Server
    if getattr(server, _INSTALLED, False):
        return
    handle_event = server._handle_event
    handle_h2_event = server.handle_h2_event

    def counting_reads_and_waking(self: _http2.Http2Server, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Wakeup) and isinstance(event.command, AnswerLater):
            return deliver(self, event.command)
        if isinstance(event, events.DataReceived):
            setattr(self, _LEFT, ANSWERS_PER_READ)
        return handle_event(self, event)

    def answering(self: _http2.Http2Server, event: h2.events.Event) -> layer.CommandGenerator[bool]:
        answerer = _answerer
        if isinstance(event, h2.events.RequestReceived) and answerer is not None:
            answered = answer(self, event, answerer)
            if isinstance(answered, AnswerLater):
                yield answered
                return False
            if answered:
                return False
        return (yield from handle_h2_event(self, event))

    server._handle_event = counting_reads_and_waking  # type: ignore[method-assign]
    server.handle_h2_event = answering  # type: ignore[method-assign]
    setattr(server, _INSTALLED, True)


def _install_wakeups() -> None:
    handler = server.ConnectionHandler
    if getattr(handler, _WAKEUP_INSTALLED, False):
        return
    wakeup = handler.wakeup

    async def waking_when_done(self: server.ConnectionHandler, request: commands.RequestWakeup) -> None:
        if not isinstance(request, AnswerLater):
            return await wakeup(self, request)
        with self.timeout_watchdog.disarm():  # as while a flow's hook runs: the client waits for this answer
            await asyncio.wait([request.work])  # cancelled with the connection; the work goes on
        task = asyncio.current_task()
        assert task is not None
        self.wakeup_timer.discard(task)
        await self.server_event(events.Wakeup(request))

    handler.wakeup = waking_when_done  # type: ignore[method-assign]
    setattr(handler, _WAKEUP_INSTALLED, True)


def answer(server: _http2.Http2Server, event: h2.events.RequestReceived, answerer: Answerer) -> bool | AnswerLater:
    """Whether the request of `event` was answered here, or the wake-up to yield for its answer to come.
    False: it is left to the flow path."""
    left: int = getattr(server, _LEFT, 0)
    if not event.stream_ended or not server.context.client.tls or left <= 0:
        return False
    request = complete_get(event.headers, server.context.options.validate_inbound_headers)
    if request is None or not server.is_open_for_us(event.stream_id):
        return False
    answered = answerer(request, time.time())
    if answered is None:
        return False
    setattr(server, _LEFT, left - 1)
    if isinstance(answered, tuple):
        send_response(server.h2_conn, event.stream_id, *answered)
        return True
    return AnswerLater(spawn(answered, f"answer {request.host}{request.path}"), event.stream_id)


def deliver(server: _http2.Http2Server, later: AnswerLater) -> layer.CommandGenerator[None]:
    """Send the answer `later` waited for, if the client still has its stream open (it may have reset it)."""
    if server.is_open_for_us(later.stream_id):
        if later.work.cancelled() or later.work.exception() is not None:
            # Not expected (the work answers its own errors); the client is not left waiting for nothing.
            server.h2_conn.reset_stream(later.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            send_response(server.h2_conn, later.stream_id, *later.work.result())
    if data := server.h2_conn.data_to_send():
        yield commands.SendData(server.conn, data)


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
