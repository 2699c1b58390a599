"""Requests answered on a client's HTTP/2 connection without a flow (h2_answers): mitmproxy's Http2Server
layer, driven by a real h2 client's bytes, answers what the answerer answers as mitmproxy would have sent it,
at once or when the answer's work is done, and hands everything else to the flow path unchanged."""

from __future__ import annotations

import asyncio
import socket
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

with warnings.catch_warnings():  # mitmproxy's addons import code that warns of deprecations
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import addonmanager, connection, http, options
    from mitmproxy.addons import proxyserver
    from mitmproxy.proxy import commands, events, mode_specs, server
    from mitmproxy.proxy.context import Context
    from mitmproxy.proxy.layers.http import ReceiveHttp, RequestHeaders, _http2
    from mitmproxy.proxy.layers.http._http2 import Http2Server

from ruststash import h2_answers, mitm_tuning
from ruststash.addon import client_request
from ruststash.replies import ClientRequest

AUTHORITY = "index.crates.io"


class Answerer:
    """Answers the paths it knows, records every request it is asked."""

    def __init__(self, answers: dict[str, h2_answers.Answer]) -> None:
        self.answers = answers
        self.later: dict[str, asyncio.Future[h2_answers.Answer]] = {}  # answered when the future is
        self.asked: list[ClientRequest] = []

    def __call__(self, request: ClientRequest, started: float) -> h2_answers.Answer | h2_answers.AnswerWork | None:
        assert abs(started - time.time()) < 60
        self.asked.append(request)
        if request.path in self.later:
            return self._when_done(self.later[request.path])
        return self.answers.get(request.path)

    async def _when_done(self, answer: asyncio.Future[h2_answers.Answer]) -> h2_answers.Answer:
        return await answer


def response(status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> h2_answers.Answer:
    return status, headers, body


def proxy_options() -> options.Options:
    """Options with mitmproxy's proxy options (validate_inbound_headers and the HTTP/2 ones) at their defaults."""
    opts = options.Options()
    proxyserver.Proxyserver().load(addonmanager.Loader(SimpleNamespace(options=opts)))
    return opts


class Connected:
    """mitmproxy's Http2Server for one client connection, and a real h2 client talking to it."""

    def __init__(self, tls: bool = True, window: int = 65535) -> None:
        peer = connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080), timestamp_start=0.0)
        peer.tls = tls
        peer.alpn = b"h2"
        self.server = Http2Server(Context(peer, proxy_options()))
        self.peer = peer
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.client = h2.connection.H2Connection(config)
        self.client.local_settings.initial_window_size = window
        self.client.initiate_connection()
        self.to_client(list(self.server.handle_event(events.Start())))
        self.send()  # the client's preface and settings, and its ACK of the server's

    def to_client(self, issued: list[commands.Command]) -> list[h2.events.Event]:
        received: list[h2.events.Event] = []
        for command in issued:
            if isinstance(command, commands.SendData):
                received += self.client.receive_data(command.data)
        return received

    def send(self) -> tuple[list[commands.Command], list[h2.events.Event]]:
        """What the client has written, read by the server in one read: (its commands, the client's events)."""
        issued = list(self.server.handle_event(events.DataReceived(self.peer, self.client.data_to_send())))
        return issued, self.to_client(issued)

    def get(self, path: str, method: str = "GET", end_stream: bool = True, authority: str = AUTHORITY) -> int:
        stream_id = self.client.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "https"), (":path", path)]
        if authority:
            headers.append((":authority", authority))
        headers += [("accept", "*/*")] if authority else [("host", AUTHORITY)]  # h2 wants one or the other
        self.client.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in headers], end_stream=end_stream)
        return stream_id


def empty_data_frames(received: list[h2.events.Event], stream_id: int) -> int:
    return sum(isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id and not e.data for e in received)


@pytest.fixture
def answer() -> Iterator[Answerer]:
    mitm_tuning.install()  # as `serve` runs mitmproxy
    h2_answers.install()
    answerer = Answerer({})
    h2_answers.register(answerer)
    yield answerer
    h2_answers.register(None)


def flow_requests(issued: list[commands.Command]) -> list[http.Request]:
    """The requests the server handed up to mitmproxy's HTTP layer (each becomes a flow)."""
    return [c.event.request for c in issued if isinstance(c, ReceiveHttp) and isinstance(c.event, RequestHeaders)]


def reply_of(received: list[h2.events.Event], stream_id: int) -> tuple[list[tuple[bytes, bytes]], bytes, bool]:
    headers: list[tuple[bytes, bytes]] = []
    body, ended = b"", False
    for event in received:
        if getattr(event, "stream_id", None) != stream_id:
            continue
        if isinstance(event, h2.events.ResponseReceived):
            headers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            body += event.data
        elif isinstance(event, h2.events.StreamEnded):
            ended = True
    return headers, body, ended


def test_a_hit_is_answered_in_place_as_mitmproxy_would_send_it(answer: Answerer) -> None:
    body = b'{"name":"serde"}\n' * 10
    answer.answers["/se/rd/serde"] = response(
        200, body, [(b"Content-Type", b"application/json"), (b"connection", b"keep-alive"), (b"x-cache", b"HIT")]
    )
    conn = Connected()
    stream_id = conn.get("/se/rd/serde")

    issued, received = conn.send()

    assert flow_requests(issued) == []  # no flow
    assert [(r.method, r.scheme, r.host, r.port, r.path) for r in answer.asked] == [
        ("GET", "https", AUTHORITY, 443, "/se/rd/serde")
    ]
    assert answer.asked[0].headers["accept"] == "*/*"
    headers, got, ended = reply_of(received, stream_id)
    # names lowercased and the connection-specific header dropped, as mitmproxy normalises a response
    assert headers == [(b":status", b"200"), (b"content-type", b"application/json"), (b"x-cache", b"HIT")]
    assert got == body and ended
    assert empty_data_frames(received, stream_id) == 0  # the body's frame ends the stream


def test_a_body_beyond_the_clients_window_waits_for_its_window_updates(answer: Answerer) -> None:
    body = bytes(range(256)) * 1000  # 256,000 bytes: frames of 16 KiB, past a 64 KiB window
    answer.answers["/crates/big/1.0.0/download"] = response(200, body, [(b"content-length", b"256000")])
    conn = Connected(window=65535)
    stream_id = conn.get("/crates/big/1.0.0/download")

    _, received = conn.send()
    headers, got, ended = reply_of(received, stream_id)
    assert headers[0] == (b":status", b"200") and len(got) == 65535 and not ended
    waiting = conn.server.h2_conn.stream_buffers[stream_id]  # views of the body, not copies
    assert waiting and all(isinstance(piece.data, memoryview) and piece.data.obj is body for piece in waiting)
    assert [piece.end_stream for piece in waiting][-2:] == [False, True]  # the last piece ends the stream

    for _ in range(10):  # the client reads and opens its window; the server sends on
        for event in received:
            if isinstance(event, h2.events.DataReceived):
                conn.client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        _, received = conn.send()
        _, more, ended = reply_of(received, stream_id)
        got += more
        assert empty_data_frames(received, stream_id) == 0
        if ended:
            break
    assert got == body and ended


def test_an_answer_without_a_body_ends_the_stream_with_its_headers(answer: Answerer) -> None:
    answer.answers["/se/rd/serde"] = response(304, b"", [(b"etag", b'"abc"')])
    conn = Connected()
    stream_id = conn.get("/se/rd/serde")

    _, received = conn.send()

    assert reply_of(received, stream_id) == ([(b":status", b"304"), (b"etag", b'"abc"')], b"", True)
    ends = [e for e in received if isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id]
    headers_ending = [e for e in received if isinstance(e, h2.events.ResponseReceived) and e.stream_ended]
    assert len(ends) == 1 and headers_ending  # no empty DATA frame after the headers


def test_what_the_answerer_declines_goes_to_the_flow_path(answer: Answerer) -> None:
    conn = Connected()
    conn.get("/config.json")

    issued, received = conn.send()

    assert len(answer.asked) == 1
    assert [r.path for r in flow_requests(issued)] == ["/config.json"]
    assert not [e for e in received if isinstance(e, h2.events.ResponseReceived)]


@pytest.mark.parametrize(
    ("method", "end_stream", "authority"),
    [("HEAD", True, AUTHORITY), ("POST", True, AUTHORITY), ("GET", False, AUTHORITY), ("GET", True, "")],
    ids=["head", "post", "get-with-a-body-to-come", "no-authority"],
)
def test_other_requests_are_not_offered_to_the_answerer(
    answer: Answerer, method: str, end_stream: bool, authority: str
) -> None:
    answer.answers["/se/rd/serde"] = response(200, b"x", [])
    conn = Connected()
    conn.get("/se/rd/serde", method=method, end_stream=end_stream, authority=authority)

    issued, _ = conn.send()

    assert answer.asked == []
    assert [r.method for r in flow_requests(issued)] == [method]


def test_a_connection_whose_client_side_is_not_tls_is_left_to_the_flow_path(answer: Answerer) -> None:
    answer.answers["/se/rd/serde"] = response(200, b"x", [])
    conn = Connected(tls=False)
    conn.get("/se/rd/serde")

    issued, _ = conn.send()

    assert answer.asked == [] and len(flow_requests(issued)) == 1


def test_no_answerer_registered_means_the_flow_path(answer: Answerer) -> None:
    h2_answers.register(None)
    conn = Connected()
    conn.get("/se/rd/serde")

    issued, _ = conn.send()

    assert len(flow_requests(issued)) == 1


def test_one_read_answers_at_most_answers_per_read_the_rest_take_the_flow_path(
    answer: Answerer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h2_answers, "ANSWERS_PER_READ", 3)
    for n in range(5):
        answer.answers[f"/crate/{n}"] = response(200, b"body %d" % n, [])
    conn = Connected()
    streams = [conn.get(f"/crate/{n}") for n in range(5)]

    issued, received = conn.send()  # all five in one read

    answered_here = [s for s in streams if reply_of(received, s)[2]]
    assert answered_here == streams[:3]
    assert [r.path for r in flow_requests(issued)] == ["/crate/3", "/crate/4"]

    stream = conn.get("/crate/0")  # the next read starts a new allowance
    _, received = conn.send()
    assert reply_of(received, stream)[1:] == (b"body 0", True)


REQUEST_HEADS = [
    [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"index.crates.io"), (b":path", b"/se/rd/serde")],
    [  # a port, a name in capitals, repeated headers, a query, bytes that are not UTF-8
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"Static.Crates.IO:8443"),
        (b":path", b"/crates/a/1.0.0/download?x=\xff"),
        (b"accept", b"*/*"),
        (b"Cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"user-agent", b"cargo/1.95.0 \xe2\x82"),
    ],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"[::1]:8080"), (b":path", b"/x")],
]


@pytest.mark.parametrize("head", REQUEST_HEADS, ids=["plain", "port-case-repeats-bytes", "ipv6"])
def test_a_request_is_read_as_the_flow_path_reads_mitmproxys(head: list[tuple[bytes, bytes]]) -> None:
    host, port, method, scheme, authority, path, fields = _http2.parse_h2_request_headers(head)
    made = http.Request(host, port, method, scheme, authority, path, b"HTTP/2.0", fields, b"", None, 0.0, None)
    assert h2_answers.complete_get(head, validate_inbound_headers=True) == client_request(made)


@pytest.mark.parametrize(
    "extra",
    [
        [(b"content-length", b"0")],
        [(b"transfer-encoding", b"chunked")],
        [(b"bad name", b"x")],  # refused by mitmproxy's header-name check
    ],
    ids=["content-length", "transfer-encoding", "bad-header-name"],
)
def test_a_request_mitmproxy_would_weigh_or_refuse_is_left_to_the_flow_path(extra: list[tuple[bytes, bytes]]) -> None:
    head = [*REQUEST_HEADS[0], *extra]
    assert h2_answers.complete_get(REQUEST_HEADS[0], validate_inbound_headers=True) is not None
    assert h2_answers.complete_get(head, validate_inbound_headers=True) is None
    for scheme in (b"ftp", b""):
        other = [(name, scheme if name == b":scheme" else value) for name, value in REQUEST_HEADS[0]]
        assert h2_answers.complete_get(other, validate_inbound_headers=True) is None


# ---- answers that need work first (a miss, a revalidation): sent when the work is done


def answers_later(issued: list[commands.Command]) -> list[h2_answers.AnswerLater]:
    return [c for c in issued if isinstance(c, h2_answers.AnswerLater)]


async def woken(conn: Connected, later: h2_answers.AnswerLater) -> list[h2.events.Event]:
    """What the client receives when the connection's handler delivers `later`'s wake-up to the layer."""
    await asyncio.wait([later.work])
    return conn.to_client(list(conn.server.handle_event(events.Wakeup(later))))


async def test_an_answer_that_needs_work_goes_out_when_the_work_is_done(answer: Answerer) -> None:
    work = asyncio.get_running_loop().create_future()
    answer.later["/se/rd/serde"] = work
    answer.answers["/in/place"] = response(200, b"now", [])
    conn = Connected()
    waiting = conn.get("/se/rd/serde")

    issued, received = conn.send()

    (later,) = answers_later(issued)
    assert later.stream_id == waiting and flow_requests(issued) == []  # no flow: a wake-up is asked for
    assert reply_of(received, waiting) == ([], b"", False)
    meanwhile = conn.get("/in/place")  # the connection goes on while the work runs
    _, received = conn.send()
    assert reply_of(received, meanwhile)[1:] == (b"now", True)

    work.set_result(response(200, b"body", [(b"ETag", b'"1"')]))
    received = await woken(conn, later)
    assert reply_of(received, waiting) == ([(b":status", b"200"), (b"etag", b'"1"')], b"body", True)
    assert empty_data_frames(received, waiting) == 0


async def test_a_stream_the_client_reset_meanwhile_is_not_answered_and_the_connection_goes_on(
    answer: Answerer,
) -> None:
    work = asyncio.get_running_loop().create_future()
    answer.later["/se/rd/serde"] = work
    answer.answers["/in/place"] = response(200, b"now", [])
    conn = Connected()
    waiting = conn.get("/se/rd/serde")
    (later,) = answers_later(conn.send()[0])

    conn.client.reset_stream(waiting)
    issued, _ = conn.send()
    assert flow_requests(issued) == []

    work.set_result(response(200, b"body", []))
    assert [e for e in await woken(conn, later) if getattr(e, "stream_id", None) == waiting] == []
    stream = conn.get("/in/place")
    assert reply_of(conn.send()[1], stream)[1:] == (b"now", True)


async def test_work_that_did_not_finish_resets_its_stream(answer: Answerer) -> None:
    answer.later["/se/rd/serde"] = asyncio.get_running_loop().create_future()
    conn = Connected()
    waiting = conn.get("/se/rd/serde")
    (later,) = answers_later(conn.send()[0])

    later.work.cancel()  # what the work never does (its own errors are answers), and the proxy stopping does
    received = await woken(conn, later)

    (reset,) = [e for e in received if isinstance(e, h2.events.StreamReset)]
    assert reset.stream_id == waiting and reset.error_code == h2.errors.ErrorCodes.INTERNAL_ERROR


async def test_a_wake_up_after_the_connection_closed_does_nothing(answer: Answerer) -> None:
    work = asyncio.get_running_loop().create_future()
    answer.later["/se/rd/serde"] = work
    conn = Connected()
    conn.get("/se/rd/serde")
    (later,) = answers_later(conn.send()[0])

    list(conn.server.handle_event(events.ConnectionClosed(conn.peer)))
    work.set_result(response(200, b"body", []))
    await asyncio.wait([later.work])

    assert list(conn.server.handle_event(events.Wakeup(later))) == []


@dataclass
class Handler:
    """mitmproxy's connection handler for a real (socketpair) client connection; the events it would hand
    its layers are recorded instead."""

    live: server.ConnectionHandler
    delivered: list[events.Event]


@pytest.fixture
async def handler() -> AsyncIterator[Handler]:
    h2_answers.install()
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    mode = mode_specs.ProxyMode.parse("regular")
    live = server.SimpleConnectionHandler(reader, writer, proxy_options(), mode, {})  # type: ignore[no-untyped-call]
    delivered: list[events.Event] = []

    async def recording(event: events.Event) -> None:
        delivered.append(event)

    live.server_event = recording  # type: ignore[method-assign]
    yield Handler(live, delivered)
    writer.close()
    theirs.close()


async def test_the_handler_wakes_the_layer_when_the_work_is_done_and_no_idle_timeout_cuts_the_wait(
    handler: Handler,
) -> None:
    work = asyncio.get_running_loop().create_future()
    later = h2_answers.AnswerLater(work, 1)
    timer = asyncio.ensure_future(handler.live.wakeup(later))
    handler.live.wakeup_timer.add(timer)
    await asyncio.sleep(0.05)
    assert not timer.done() and handler.delivered == []  # (delay 0: a timer would have fired already)
    assert not handler.live.timeout_watchdog.can_timeout.is_set()  # disarmed while the client waits

    work.set_result(response(200, b"x", []))
    await asyncio.wait_for(timer, 5)

    (event,) = handler.delivered
    assert isinstance(event, events.Wakeup) and event.command is later
    assert timer not in handler.live.wakeup_timer and handler.live.timeout_watchdog.can_timeout.is_set()


async def test_a_closed_connections_wake_up_is_cancelled_and_the_work_goes_on(handler: Handler) -> None:
    work = asyncio.get_running_loop().create_future()
    timer = asyncio.ensure_future(handler.live.wakeup(h2_answers.AnswerLater(work, 1)))
    await asyncio.sleep(0.01)

    timer.cancel()  # what the handler does to its wake-ups when the client's connection closes
    await asyncio.wait([timer])

    assert not work.cancelled() and handler.delivered == []
    assert handler.live.timeout_watchdog.can_timeout.is_set()


async def test_other_wake_ups_still_wait_for_their_delay(handler: Handler) -> None:
    request = commands.RequestWakeup(0.01)
    await asyncio.wait_for(handler.live.wakeup(request), 5)
    (event,) = handler.delivered
    assert isinstance(event, events.Wakeup) and event.command is request
