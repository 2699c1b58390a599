"""Per-request and per-chunk work in mitmproxy that costs CPU for nothing here, cut down.

- mitmproxy type-checks every field of every request and response it builds (`MessageData.__post_init__`,
  which exists only when Python runs without -O): about 6 % of the proxy's CPU on a warm cargo run. The
  values come from mitmproxy's own parsers and from our addon, whose types mypy checks. Other assertions
  stay: -O would drop those too, and they guard mitmproxy's state machines.
- For every hook of every flow (requestheaders, request, response, ...) mitmproxy walks all addons looking
  for a method of that name, each call inside a context manager, and then does the same again for an
  `update` hook that none of our addons has: a walk over the chain for nothing, per hook. The callables
  per hook name are looked up once (again whenever an addon is added or removed), and `update` is only
  triggered if some addon has it. Errors in an addon are logged as mitmproxy logs them, and AddonHalt
  still stops the hook.
- mitmproxy reads its connections 64 KiB at a time and runs each read through its whole layer stack
  (HTTP, TLS, the tunnel). A large hit comes from our loopback blob server far faster than that: reading up
  to 1 MiB at a time (whatever is buffered) cut the proxy's CPU for a cached 110 MiB toolchain by about a
  third (docs/benchmarks.md).
- mitmproxy's TLS layer takes what OpenSSL encrypted out of its memory BIO 64 KiB at a time, and each
  piece goes down the layer stack as its own write: a 256 KiB chunk of a large hit became four or five
  writes. Taking up to TLS_OUT_SIZE at once makes it one: proxy CPU per MiB of a cached 200 MiB archive
  fetched with curl 4.7-4.9 -> 4.2 ms, 180 -> 225 MiB/s (docs/benchmarks.md).
- What a TLS layer's child sends while handling one event went into OpenSSL piece by piece: a response's
  HEADERS frame, its DATA frame and the frame that ends the stream were three TLS records, three passes down
  the layer stack and three socket writes. The pieces of one event now go in together (`_coalescing_sends`),
  in the order they came: before anything else the child asks for on that connection (a close) and at the
  end of the event. Not for DTLS, where a piece is a datagram.
- mitmproxy's Master puts a handler on the root logger that turns every log record into a deprecated
  `add_log` hook: the record formatted once more, a wake-up of the event loop through its self-pipe (a
  write and a read syscall) and a walk over the addons, per record. No addon here has `add_log`, and our
  access log writes a record per request: `without_legacy_log_events` takes that handler off.

- A hook's completion went back into its connection through a lock: each hook of each flow runs as a task
  (eager: it starts at once, inside the connection's `server_event`), and when it finished it called
  `server_event` again with HookCompleted, which had to wait for that lock, still held by the call that
  started the hook. So every hook cost a trip round the event loop, and the lock hands over to one waiter
  per trip: with cargo's HTTP/2 bursts (a hundred requests on one connection, four hooks each) the flows of a
  connection advanced one hook per loop iteration, behind everything else that was ready. A hook that
  finishes without suspending (most of them; a hit from memory too) now has its completion handed to the
  connection as soon as the `server_event` that started it returns, with no trip. A hook that suspends (an
  upstream fetch) completes as before. A connection that goes on completing hooks this way for longer than
  INLINE_SLICE (a flood of pipelined hits) hands the rest to a task of its own, which goes on once the loop
  has run, so other connections are not held up. Warm cargo runs with 4 and 8 clients: revalidations sent
  upstream halved (requests for one index file now meet in flight) and wall and CPU time went down
  (docs/benchmarks.md).

- A flow that our addon answers itself (a revalidated entry or an error of ours in its `request` hook; a hit
  from memory already in `requestheaders`) still went through the hooks after that one (`request`,
  `responseheaders`, `response`): each a task, a pass up and down the layer stack and a call of our addon
  that does nothing for such a flow. The addon marks such a flow (`mark_answered`) and those hooks are
  completed in the HTTP layer at once, without being dispatched. That is only right while the other addons
  serve loads (proxy.MITMPROXY_ADDONS) have none of them, or do nothing in them for a flow that has its
  response (mitmproxy's TlsConfig has `request`, and returns at once for such a flow); a test checks. A hit
  from memory now costs one hook instead of four, a revalidated index file two.

- The header blocks of HTTP/2 responses were Huffman-coded in pure Python and indexed into a dynamic table that
  their one-off values (ETag, Content-Length) never matched again: about 37 us per response. Every HTTP/2
  connection's encoder is now `hpack_plain.PlainEncoder` (static table and plain literals): about 8 us.

- mitmproxy's HTTP/2 connection cuts a body into frame-sized pieces by slicing it: a copy of the whole body,
  held piece by piece while the client's flow-control window keeps it waiting. Eight warm cargo clients keep
  tens of MiB of crates waiting so, copies of bodies that memory or a flow already holds. A body is now cut
  into views of itself (`memoryview`, which h2 accepts; h2_frames appends each to the connection's buffer).
- mitmproxy parses each request's authority (`host:port`) afresh, and its check of the host name runs it
  through the IDNA codec: about 6 us a request, for the same few host names. The results are kept for the
  last AUTHORITY_MEMO authorities seen (a malformed one raises each time, as before).

Hits from memory on HTTP/2 connections, and cargo's requests that need upstream, skip the flow machinery altogether:
see h2_answers.

Re-check all of these when mitmproxy is upgraded (it is pinned in constraints.txt).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks, http, log
from mitmproxy.master import Master
from mitmproxy.net.http import url
from mitmproxy.proxy import commands, events, layer, server, tunnel
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers import tls
from mitmproxy.proxy.layers.http import _hooks as http_hooks
from mitmproxy.proxy.layers.http import _http_h2
from mitmproxy.utils import asyncio_utils
from OpenSSL import SSL

from ruststash import h2_frames
from ruststash.hpack_plain import PlainEncoder

READ_SIZE = 1 << 20
TLS_OUT_SIZE = 1 << 20
_INSTALLED = "_ruststash_large_reads"
_LIFECYCLE_INSTALLED = "_ruststash_lifecycle"
_HOOK_CACHE = "_ruststash_hook_callables"
_INLINE_INSTALLED = "_ruststash_inline_hooks"
_SKIP_INSTALLED = "_ruststash_skip_answered"
_PLAIN_HPACK_INSTALLED = "_ruststash_plain_hpack"
# Set on a flow that our addon answered: see mark_answered.
_ANSWERED = "ruststash.answered"
# The hooks of an answered flow that are completed without being dispatched (`request`: when it was answered
# in `requestheaders`).
_SKIPPED_WHEN_ANSWERED = (http_hooks.HttpRequestHook, http_hooks.HttpResponseHeadersHook, http_hooks.HttpResponseHook)
# How long one connection may go on completing hooks without a suspension before the others get the loop.
INLINE_SLICE = 0.02
# How many parsed authorities are kept.
AUTHORITY_MEMO = 1024

logger = logging.getLogger("mitmproxy.addonmanager")


def install() -> None:
    if "__post_init__" in vars(http.MessageData):
        http.MessageData.__post_init__ = _unchecked  # type: ignore[method-assign]
    _install_lifecycle()
    _install_inline_hook_completion()
    _install_answered_hook_skipping()
    _install_plain_hpack()
    h2_frames.install()
    _install_authority_memo()
    tls.TLSLayer.tls_interact = _tls_interact  # type: ignore[method-assign]
    tls.TLSLayer.event_to_child = _coalescing_sends  # type: ignore[method-assign,assignment]
    handler = server.ConnectionHandler
    if getattr(handler, _INSTALLED, False):
        return
    handle_connection = handler.handle_connection

    async def with_large_reads(self: server.ConnectionHandler, connection: Any) -> None:
        io = self.transports[connection]
        if isinstance(io.reader, asyncio.StreamReader):
            io.reader = _LargeReads(io.reader)  # type: ignore[assignment]
        await handle_connection(self, connection)

    handler.handle_connection = with_large_reads  # type: ignore[method-assign]
    setattr(handler, _INSTALLED, True)


def _install_plain_hpack() -> None:
    """HTTP/2 connections get `PlainEncoder`, and cut bodies into views instead of copies."""
    connection = _http_h2.BufferedH2Connection
    if getattr(connection, _PLAIN_HPACK_INSTALLED, False):
        return
    init = connection.__init__
    send_data = connection.send_data

    def with_plain_encoder(self: _http_h2.BufferedH2Connection, config: Any) -> None:
        init(self, config)
        self.encoder = PlainEncoder()

    def sending_views(
        self: _http_h2.BufferedH2Connection,
        stream_id: int,
        data: bytes,
        end_stream: bool = False,
        pad_length: None = None,
    ) -> None:
        if isinstance(data, bytes) and len(data) > self.max_outbound_frame_size:
            data = memoryview(data)  # type: ignore[assignment]  # h2 takes bytes | memoryview
        send_data(self, stream_id, data, end_stream, pad_length)

    connection.__init__ = with_plain_encoder  # type: ignore[method-assign]
    connection.send_data = sending_views  # type: ignore[method-assign]
    setattr(connection, _PLAIN_HPACK_INSTALLED, True)


def _install_authority_memo() -> None:
    if not hasattr(url.parse_authority, "cache_info"):
        url.parse_authority = functools.lru_cache(maxsize=AUTHORITY_MEMO)(url.parse_authority)


def without_legacy_log_events(master: Master) -> None:
    """Take off the root-logger handler through which `master` triggers the deprecated `add_log` hook."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, log.LegacyLogEvents) and handler.master is master:
            handler.uninstall()


def _tls_interact(self: tls.TLSLayer) -> layer.CommandGenerator[None]:
    """TLSLayer.tls_interact, taking up to TLS_OUT_SIZE bytes per write instead of 64 KiB."""
    assert self.tls is not None
    while True:
        try:
            data = self.tls.bio_read(TLS_OUT_SIZE)
        except SSL.WantReadError:
            return  # nothing more waiting to be sent
        yield commands.SendData(self.conn, data)


def mark_answered(flow: http.HTTPFlow) -> None:
    """Say that our addon set `flow.response` (in `requestheaders` or `request`) and that no addon has anything
    to do in the flow's later hooks (`request`, `responseheaders`, `response`): they are then not dispatched
    (see the module's docstring)."""
    flow.metadata[_ANSWERED] = True


def _install_answered_hook_skipping() -> None:
    stream = http_layers.HttpStream
    if getattr(stream, _SKIP_INSTALLED, False):
        return
    handle_event = stream._handle_event

    def skipping_answered_hooks(self: http_layers.HttpStream, event: events.Event) -> layer.CommandGenerator[None]:
        commands_of_event = handle_event(self, event)
        reply: Any = None
        while True:
            try:
                command = commands_of_event.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if isinstance(command, _SKIPPED_WHEN_ANSWERED) and command.flow.metadata.get(_ANSWERED):
                reply = None  # what the hook's completion would have sent back
                continue
            reply = yield command

    stream._handle_event = skipping_answered_hooks  # type: ignore[method-assign]
    setattr(stream, _SKIP_INSTALLED, True)


def _coalescing_sends(self: tls.TLSLayer, event: events.Event) -> layer.CommandGenerator[None]:
    """TunnelLayer.event_to_child, with the data the child sends on this connection for one event encrypted
    and sent in one piece (see the module's docstring)."""
    if self.tunnel_state is tunnel.TunnelState.ESTABLISHING and not self.command_to_reply_to:
        self._event_queue.append(event)
        return
    held: list[bytes] = []
    for command in self.child_layer.handle_event(event):
        if (
            type(command) is commands.SendData
            and command.connection == self.conn
            and self.tunnel_state is tunnel.TunnelState.OPEN
            and not self.is_dtls
        ):
            held.append(command.data)
            continue
        if held:
            yield from self.send_data(b"".join(held))
            held.clear()
        yield from self._handle_command(command)
    if held:
        yield from self.send_data(b"".join(held))


def _unchecked(self: http.MessageData) -> None:
    pass


class _LargeReads:
    """A StreamReader whose `read(n)` may return up to READ_SIZE bytes at once (whatever is buffered)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def read(self, n: int = -1) -> bytes:
        return await self._reader.read(READ_SIZE if 0 < n < READ_SIZE else n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def _install_lifecycle() -> None:
    manager = addonmanager.AddonManager
    if getattr(manager, _LIFECYCLE_INSTALLED, False):
        return
    register, remove = manager.register, manager.remove

    def registering(self: addonmanager.AddonManager, addon: Any) -> Any:
        vars(self).pop(_HOOK_CACHE, None)
        return register(self, addon)  # type: ignore[no-untyped-call]

    def removing(self: addonmanager.AddonManager, addon: Any) -> None:
        vars(self).pop(_HOOK_CACHE, None)
        remove(self, addon)  # type: ignore[no-untyped-call]

    manager.register = registering  # type: ignore[method-assign]
    manager.remove = removing  # type: ignore[method-assign]
    manager.handle_lifecycle = _handle_lifecycle  # type: ignore[method-assign]
    setattr(manager, _LIFECYCLE_INSTALLED, True)


def hook_callables(manager: addonmanager.AddonManager, name: str) -> list[Callable[..., Any]]:
    """Every addon method (sub-addons included, in chain order) that handles the hook `name`."""
    cache: dict[str, list[Callable[..., Any]]] = vars(manager).setdefault(_HOOK_CACHE, {})
    found = cache.get(name)
    if found is None:
        found = cache[name] = [
            func
            for addon in addonmanager.traverse(manager.chain)  # type: ignore[no-untyped-call]
            if callable(func := getattr(addon, name, None))
        ]
    return found


async def _handle_lifecycle(self: addonmanager.AddonManager, event: hooks.Hook) -> None:
    """AddonManager.handle_lifecycle without the walks for nothing (see the module's docstring)."""
    args = event.args()
    await _trigger(self, event.name, args)
    if isinstance(args[0], flow.Flow) and hook_callables(self, "update"):
        update = hooks.UpdateHook([args[0]])
        await _trigger(self, update.name, update.args())


async def _trigger(manager: addonmanager.AddonManager, name: str, args: list[Any]) -> None:
    for func in hook_callables(manager, name):
        try:
            result = func(*args)
            if result is not None and inspect.isawaitable(result):
                await result
        except exceptions.AddonHalt:
            return
        except exceptions.OptionsError:
            raise
        except Exception as exc:
            logger.error(f"Addon error: {exc}", exc_info=True)


class _Completions:
    """Hook completions gathered while one `server_event` call of `handler` runs (see the module docstring)."""

    __slots__ = ("events", "handler", "open")

    def __init__(self, handler: server.ConnectionHandler) -> None:
        self.handler = handler
        self.events: list[events.HookCompleted] = []
        self.open = True


_GATHERING: contextvars.ContextVar[_Completions | None] = contextvars.ContextVar("ruststash_gathering", default=None)


def _install_inline_hook_completion() -> None:
    handler = server.ConnectionHandler
    if getattr(handler, _INLINE_INSTALLED, False):
        return
    server_event = handler.server_event

    async def gathering_server_event(self: server.ConnectionHandler, event: events.Event) -> None:
        # A queue, not recursion: HTTP/1.1 pipelining chains one request's hooks after another's.
        pending: collections.deque[events.Event] = collections.deque([event])
        started = time.monotonic()
        while pending:
            gathered = _Completions(self)
            token = _GATHERING.set(gathered)
            try:
                await server_event(self, pending.popleft())
            finally:
                gathered.open = False
                _GATHERING.reset(token)
            pending.extend(gathered.events)
            if pending and time.monotonic() - started > INLINE_SLICE:
                # A long chain (a flood of pipelined hits): the rest goes on in a task of its own once the
                # others have had the loop. Not here after a pause: this task (the client's reader, often)
                # may be cancelled meanwhile, and the completions must still reach their flows.
                asyncio.get_running_loop().call_soon(deliver_later, self, list(pending))
                return

    def deliver_later(self: server.ConnectionHandler, completions: list[events.Event]) -> None:
        asyncio_utils.create_task(
            deliver(self, completions), name="hook completions", keep_ref=True, client=self.client.peername
        )

    async def deliver(self: server.ConnectionHandler, completions: list[events.Event]) -> None:
        for completed in completions:
            await self.server_event(completed)

    async def hook_task(self: server.ConnectionHandler, hook: commands.StartHook) -> None:
        # A task made inside `server_event` runs in a copy of its context, so this is that call's gathering.
        gathered = _GATHERING.get()
        await self.handle_hook(hook)
        if not hook.blocking:
            return
        if gathered is not None and gathered.open and gathered.handler is self:
            gathered.events.append(events.HookCompleted(hook))  # finished without suspending: no trip
        else:
            await self.server_event(events.HookCompleted(hook))

    handler.server_event = gathering_server_event  # type: ignore[method-assign]
    handler.hook_task = hook_task  # type: ignore[method-assign]
    setattr(handler, _INLINE_INSTALLED, True)
