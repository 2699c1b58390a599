"""The patched hook dispatch of mitmproxy's AddonManager (mitm_tuning) keeps mitmproxy's behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trustme
from OpenSSL import SSL

with warnings.catch_warnings():  # mitmproxy's addons import pyparsing and ldap3 code that warns of deprecations
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import connection, exceptions, http, options
    from mitmproxy.addons import proxyserver, tlsconfig
    from mitmproxy.http import HTTPFlow
    from mitmproxy.master import Master
    from mitmproxy.net.http import url
    from mitmproxy.proxy import commands, events, layer, server
    from mitmproxy.proxy.context import Context
    from mitmproxy.proxy.layers.http import (
        HttpLayer,
        HTTPMode,
        HttpRequestHook,
        HttpResponseHook,
        HttpStream,
        SendHttp,
    )
    from mitmproxy.proxy.layers.http._events import RequestEndOfMessage, RequestHeaders
    from mitmproxy.proxy.layers.tls import ClientTLSLayer, TLSLayer
    from mitmproxy.proxy.tunnel import TunnelState

from ruststash import mitm_tuning
from ruststash.proxy import MITMPROXY_ADDONS


class Named:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name  # mitmproxy's name for the addon
        self.calls = calls


class Recorder(Named):
    def request(self, flow: HTTPFlow) -> None:
        self.calls.append(f"{self.name}:request")


class AsyncRecorder(Recorder):
    async def request(self, flow: HTTPFlow) -> None:
        self.calls.append(f"{self.name}:async request")


class Failing(Recorder):
    def request(self, flow: HTTPFlow) -> None:
        raise RuntimeError("boom")


class Halting(Named):
    def response(self, flow: HTTPFlow) -> None:
        self.calls.append(f"{self.name}:response")
        raise exceptions.AddonHalt()


class Updating(Named):
    def update(self, flows: list[Any]) -> None:
        self.calls.append(f"{self.name}:update {len(flows)}")


def a_flow() -> HTTPFlow:
    client = connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080), timestamp_start=0.0)
    flow = HTTPFlow(client, connection.Server(address=("index.crates.io", 443)))
    flow.request = http.Request.make("GET", "https://index.crates.io/config.json")
    return flow


@pytest.fixture
async def master() -> Master:
    mitm_tuning.install()
    return Master(options.Options(), with_termlog=False)


async def test_hooks_run_in_chain_order_sync_and_async_and_errors_are_logged(
    master: Master, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    master.addons.add(Recorder("a", calls), Failing("b", calls), AsyncRecorder("c", calls))
    flow = a_flow()
    with caplog.at_level(logging.ERROR):
        await master.addons.handle_lifecycle(HttpRequestHook(flow))
    assert calls == ["a:request", "c:async request"]  # b failed; c still ran
    assert "Addon error: boom" in caplog.text


async def test_addon_halt_stops_the_hook_and_added_addons_are_seen(master: Master) -> None:
    calls: list[str] = []
    flow = a_flow()
    master.addons.add(Recorder("a", calls))
    await master.addons.handle_lifecycle(HttpRequestHook(flow))
    master.addons.add(Halting("h", calls), Recorder("after", calls))  # after the first dispatch
    await master.addons.handle_lifecycle(HttpRequestHook(flow))
    await master.addons.handle_lifecycle(HttpResponseHook(flow))
    assert calls == ["a:request", "a:request", "after:request", "h:response"]
    master.addons.remove(master.addons.get("a"))
    calls.clear()
    await master.addons.handle_lifecycle(HttpRequestHook(flow))
    assert calls == ["after:request"]


async def test_update_runs_only_where_an_addon_has_it(master: Master) -> None:
    calls: list[str] = []
    flow = a_flow()
    master.addons.add(Recorder("a", calls))
    assert mitm_tuning.hook_callables(master.addons, "update") == []
    master.addons.add(Updating("u", calls))
    await master.addons.handle_lifecycle(HttpRequestHook(flow))
    assert calls == ["a:request", "u:update 1"]


class LogListener(Named):
    def add_log(self, entry: Any) -> None:
        self.calls.append(f"{self.name}:add_log {entry.msg.split()[-1]}")


async def test_without_legacy_log_events_log_records_no_longer_become_hooks() -> None:
    # Made here, not in a fixture: mitmproxy's handler only passes records logged in the test phase
    # (setup, call) it was made in.
    mitm_tuning.install()
    master = Master(options.Options(), with_termlog=False)
    calls: list[str] = []
    master.addons.add(LogListener("listener", calls))
    other = Master(options.Options(), with_termlog=False)  # another master's handler is not ours to remove
    try:
        logging.getLogger("ruststash.test").warning("before")
        await asyncio.sleep(0.05)  # the hook is triggered through call_soon_threadsafe
        assert "listener:add_log before" in calls

        mitm_tuning.without_legacy_log_events(master)
        logging.getLogger("ruststash.test").warning("after")
        await asyncio.sleep(0.05)
        assert not any(call.endswith(" after") for call in calls)
        assert other._legacy_log_events in logging.getLogger().handlers
        assert master._legacy_log_events not in logging.getLogger().handlers
    finally:
        other._legacy_log_events.uninstall()
        master._legacy_log_events.uninstall()


def handshaken_pair() -> tuple[SSL.Connection, SSL.Connection]:
    """A TLS server and client in memory-BIO mode (as mitmproxy uses OpenSSL), handshake done."""
    authority = trustme.CA()
    cert = authority.issue_cert("index.crates.io")
    server_context = SSL.Context(SSL.TLS_METHOD)
    cert.configure_cert(server_context)  # type: ignore[no-untyped-call]
    client_context = SSL.Context(SSL.TLS_METHOD)
    authority.configure_trust(client_context)  # type: ignore[no-untyped-call]
    server, client = SSL.Connection(server_context), SSL.Connection(client_context)
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                side.do_handshake()
        for source, sink in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                sink.bio_write(source.bio_read(1 << 20))
    return server, client


def test_a_large_write_leaves_the_tls_layer_in_one_piece_that_the_peer_decrypts() -> None:
    mitm_tuning.install()
    server, client = handshaken_pair()
    layer = SimpleNamespace(
        tls=server,
        conn=connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080), timestamp_start=0.0),
    )
    body = os.urandom(256 * 1024)  # one read of a large hit from the blob server
    server.sendall(body)

    sent = list(TLSLayer.tls_interact(layer))  # type: ignore[arg-type]

    assert [type(command) for command in sent] == [commands.SendData]  # mitmproxy's own: five 64 KiB pieces
    client.bio_write(sent[0].data)
    received = b""
    with contextlib.suppress(SSL.WantReadError):
        while len(received) < len(body):
            received += client.recv(1 << 20)
    assert received == body


@dataclass
class QuickHook(commands.StartHook):
    """A hook whose handler finishes without suspending."""

    name = "ruststash_test_quick"
    data: object


@dataclass
class WaitingHook(commands.StartHook):
    """A hook whose handler waits (an upstream fetch, say)."""

    name = "ruststash_test_waiting"
    data: object


class HooksInTurn(layer.Layer):
    """On start, a quick hook, a waiting hook, then two quick hooks; records each completion."""

    def __init__(self, context: Context, done: list[str]) -> None:
        super().__init__(context)
        self.done = done

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            for step, hook in enumerate((QuickHook, WaitingHook, QuickHook, QuickHook)):
                yield hook(step)
                self.done.append(f"{step}:{hook.name.rsplit('_', 1)[1]}")


class Handler(server.ConnectionHandler):
    def __init__(self, context: Context, release: asyncio.Event) -> None:
        super().__init__(context)
        self.release = release

    async def handle_hook(self, hook: commands.StartHook) -> None:
        if isinstance(hook, WaitingHook):
            await self.release.wait()


async def started_hooks_in_turn(done: list[str], release: asyncio.Event) -> None:
    """A connection whose layer runs `HooksInTurn`, started (its first hooks run) as mitmproxy runs tasks."""
    mitm_tuning.install()
    client = connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080), timestamp_start=0.0)
    context = Context(client, options.Options())
    handler = Handler(context, release)
    handler.layer = HooksInTurn(context, done)
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # as mitmproxy's Master and ruststash's proxy run it
    try:
        await handler.server_event(events.Start())
    finally:
        loop.set_task_factory(None)


async def test_a_hook_that_does_not_suspend_is_completed_before_server_event_returns() -> None:
    """Each hook's completion used to wait for the connection's lock, a trip round the event loop per hook
    (mitm_tuning's docstring); one that finishes at once is now handed back within the same call. One that
    waits completes as before, and the order of a flow's hooks is kept."""
    done: list[str] = []
    release = asyncio.Event()
    await started_hooks_in_turn(done, release)
    assert done == ["0:quick"], "the quick hook took a trip round the loop"

    for _ in range(5):
        await asyncio.sleep(0)
    assert done == ["0:quick"], "a waiting hook completed before its handler finished"
    release.set()
    for _ in range(50):  # bounded: the waiting hook's task resumes within a few turns
        if len(done) == 4:
            break
        await asyncio.sleep(0)
    assert done == ["0:quick", "1:waiting", "2:quick", "3:quick"]


async def test_completions_past_the_slice_are_delivered_by_a_task_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a connection has completed hooks inline for longer than INLINE_SLICE, the rest wait one turn of the
    loop (other connections go first) and then still all arrive, in order."""
    monkeypatch.setattr(mitm_tuning, "INLINE_SLICE", -1.0)  # every chain is past its slice at once
    done: list[str] = []
    release = asyncio.Event()
    release.set()
    await started_hooks_in_turn(done, release)
    assert done == [], "completed inline beyond the slice"
    for _ in range(50):  # bounded: the delivering task runs within a few turns
        if len(done) == 4:
            break
        await asyncio.sleep(0)
    assert done == ["0:quick", "1:waiting", "2:quick", "3:quick"]


def stream_with_request(
    master: Master, flows: list[HTTPFlow], answer_in_requestheaders: bool = False
) -> tuple[HttpStream, list[commands.Command]]:
    """mitmproxy's HttpStream for one GET over HTTP/2, run up to its `request` hook (or, answered and marked in
    `requestheaders`, to its end); appends the flow to `flows`."""
    client = connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080), timestamp_start=0.0)
    client.tls = True
    master.addons.add(proxyserver.Proxyserver())  # mitmproxy's proxy options
    context = Context(client, master.options)
    HttpLayer(context, HTTPMode.regular)
    stream = HttpStream(context, 1)
    request = http.Request.make("GET", "https://index.crates.io/config.json")
    request.http_version = "HTTP/2.0"
    issued = list(stream.handle_event(events.Start()))
    issued += stream.handle_event(RequestHeaders(1, request, end_stream=True))
    flows.append(issued[-1].flow)
    if answer_in_requestheaders:
        flows[0].response = http.Response.make(200, b"{}", {"content-type": "application/json"})
        mitm_tuning.mark_answered(flows[0])
    issued += stream.handle_event(events.HookCompleted(issued[-1]))  # requestheaders
    issued += stream.handle_event(RequestEndOfMessage(1))
    return stream, issued


# What mitmproxy's HttpStream issues once a response set by an addon goes out: headers, body, end of stream.
RESPONSE_SENT = ["SendHttp", "SendHttp", "DropStream", "SendHttp"]


def hooks_and_sends(issued: list[commands.Command]) -> list[str]:
    return [type(command).__name__ for command in issued]


async def test_a_flow_answered_in_the_request_hook_skips_its_response_hooks(master: Master) -> None:
    """Our addon answers a hit in `request`; its `responseheaders` and `response` hooks have nothing to do then
    and are completed in the HTTP layer at once: the response goes out in the same event, with two hooks (a
    task and a pass through the layers each) fewer per hit."""
    flows: list[HTTPFlow] = []
    stream, issued = stream_with_request(master, flows)
    assert hooks_and_sends(issued) == ["HttpRequestHeadersHook", "HttpRequestHook"]
    flows[0].response = http.Response.make(200, b"{}", {"content-type": "application/json"})
    mitm_tuning.mark_answered(flows[0])

    after = list(stream.handle_event(events.HookCompleted(issued[-1])))

    assert hooks_and_sends(after) == RESPONSE_SENT
    assert [type(command.event).__name__ for command in after if isinstance(command, SendHttp)] == [
        "ResponseHeaders",
        "ResponseData",
        "ResponseEndOfMessage",
    ]


async def test_a_flow_answered_in_the_requestheaders_hook_skips_every_later_hook(master: Master) -> None:
    """A hit from memory is answered in `requestheaders`: its `request` hook is skipped too, and the response
    goes out as soon as the request has ended."""
    flows: list[HTTPFlow] = []
    _, issued = stream_with_request(master, flows, answer_in_requestheaders=True)
    assert hooks_and_sends(issued) == ["HttpRequestHeadersHook", *RESPONSE_SENT]


async def test_a_flow_answered_by_another_addon_or_forwarded_keeps_its_response_hooks(master: Master) -> None:
    flows: list[HTTPFlow] = []
    stream, issued = stream_with_request(master, flows)
    flows[0].response = http.Response.make(200, b"{}")  # set, but not marked as ours

    after = list(stream.handle_event(events.HookCompleted(issued[-1])))
    assert hooks_and_sends(after) == ["HttpResponseHeadersHook"]
    after = list(stream.handle_event(events.HookCompleted(after[-1])))
    assert hooks_and_sends(after) == ["HttpResponseHook"]
    after = list(stream.handle_event(events.HookCompleted(after[-1])))
    assert hooks_and_sends(after) == RESPONSE_SENT


async def test_no_other_addon_that_serve_loads_acts_in_the_hooks_skipped_for_answered_flows(
    master: Master, tmp_path: Path
) -> None:
    """mark_answered skips `request`, `responseheaders` and `response` for flows our addon answered: right only
    while the other addons of serve's have none of them or do nothing in them for a flow with a response. A
    mitmproxy upgrade that changes that fails here."""
    for addon in MITMPROXY_ADDONS:
        assert not hasattr(addon, "responseheaders"), addon
        assert not hasattr(addon, "response"), addon
    assert [addon for addon in MITMPROXY_ADDONS if hasattr(addon, "request")] == [tlsconfig.TlsConfig]
    config = tlsconfig.TlsConfig()
    master.addons.add(config)
    master.options.update(confdir=str(tmp_path))  # its CA, whose CRL its `request` hook serves
    unanswered, answered = a_flow(), a_flow()
    for flow in (unanswered, answered):
        flow.request.path = config.crl_path()
        flow.live = True  # as while mitmproxy handles it
    config.request(unanswered)
    assert unanswered.response is not None  # its CRL: the hook does act on a flow without a response
    answered.response = http.Response.make(200, b"ours")
    before = answered.get_state()
    config.request(answered)
    assert answered.get_state() == before


class Sends(layer.Layer):
    """A child layer that, for one event, sends three pieces, logs, sends once more and closes."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        client = self.context.client
        yield commands.SendData(client, b"HEADERS ")
        yield commands.SendData(client, b"DATA ")
        yield commands.SendData(client, b"END ")
        yield commands.Log("between")
        yield commands.SendData(client, b"LAST")
        yield commands.CloseConnection(client)


def test_what_a_child_sends_for_one_event_is_encrypted_in_one_piece_before_anything_else() -> None:
    """A response's HEADERS, DATA and end-of-stream frames were three TLS records and three socket writes; now
    one, in order, and whatever else the child asks for (here a log line, then a close) comes after what it sent
    before it."""
    mitm_tuning.install()
    server, client = handshaken_pair()
    peer = connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080), timestamp_start=0.0)
    context = Context(peer, options.Options())
    HttpLayer(context, HTTPMode.regular)  # the proxy's layer, whose CONNECT made the TLS layer
    tls_layer = ClientTLSLayer(context)
    tls_layer.tls = server
    tls_layer.tunnel_state = TunnelState.OPEN
    tls_layer.child_layer = Sends(context.fork())

    upstream = connection.Server(address=("index.crates.io", 443))
    issued = list(tls_layer.handle_event(events.DataReceived(upstream, b"an answer")))  # for the child

    assert [type(command).__name__ for command in issued] == ["SendData", "Log", "SendData", "CloseConnection"]
    plaintext = []
    for command in issued:
        if isinstance(command, commands.SendData):
            client.bio_write(command.data)
            plaintext.append(client.recv(1 << 16))
    assert plaintext == [b"HEADERS DATA END ", b"LAST"]


def test_parsed_authorities_are_kept_and_malformed_ones_still_refused() -> None:
    mitm_tuning.install()
    parse = url.parse_authority.__wrapped__  # type: ignore[attr-defined]  # mitmproxy's own
    hits = url.parse_authority.cache_info().hits  # type: ignore[attr-defined]
    for authority, check in [
        (b"index.crates.io:443", True),
        (b"index.crates.io", True),
        ("static.crates.io:8443", False),
        (b"[::1]:8080", True),
        (b"xn--bcher-kva.example", True),
        ("not a host!", False),
    ]:
        assert url.parse_authority(authority, check) == parse(authority, check)
        assert url.parse_authority(authority, check) == parse(authority, check)  # the kept answer, the same
    assert url.parse_authority.cache_info().hits >= hits + 6  # type: ignore[attr-defined]
    for malformed in (b"not a host!", b"index.crates.io:99999", b"a:b:c"):
        for _ in range(2):
            with pytest.raises(ValueError):
                url.parse_authority(malformed, True)
