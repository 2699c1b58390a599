"""The fault vocabulary both test origins share (fake crates.io and fake static.rust-lang.org): the modes,
a fault's settings, the bandwidth link of `throttle`, and the faults that need no body at all.

A fault applies to requests whose path starts with a prefix:

- refuse: close the connection (clean FIN) without a response (to refuse connections, stop the origin)
- reset: abort the connection with a TCP RST, no response
- hang: never answer (until the origin's faults are cleared, or `hang_max` seconds, then close)
- slow_headers: wait `delay` seconds, then answer normally
- trickle: answer normally but send the body `chunk` bytes every `delay` seconds
- truncate: send the headers (full Content-Length) and half the body, then close
- status_500 / status_503: answer with that status
- corrupt: answer normally with the body's bytes changed (same length)
- throttle: a slow link. Wait `delay` seconds before answering, then send the body in `chunk`-byte pieces at
  no more than `rate` bytes per second. The rate is that of one `Link` shared by every response the fault
  hits, so concurrent responses divide it between them as on one narrow connection. TLS handshakes are not
  delayed.

`remaining` limits how many requests a fault hits (None: until cleared).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, get_args

from aiohttp import web

FaultMode = Literal[
    "refuse",
    "reset",
    "hang",
    "slow_headers",
    "trickle",
    "truncate",
    "status_500",
    "status_503",
    "corrupt",
    "throttle",
]
FAULT_MODES: tuple[str, ...] = get_args(FaultMode)
DEFAULT_THROTTLE_RATE = 256 * 1024  # bytes per second

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Link:
    """A bandwidth cap shared by the responses of one throttle fault, across threads (each site has its own
    event loop). `reserve(n)` books the next `n` bytes of the link's time and says how long to wait until
    they have "arrived"; bookings are first come, first served."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        self.rate = rate
        self._free_at = 0.0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> float:
        with self._lock:
            now = time.monotonic()
            self._free_at = max(now, self._free_at) + size / self.rate
            return self._free_at - now


@dataclass
class Fault:
    """One fault's settings (see the module docstring for what each mode does)."""

    mode: FaultMode
    delay: float = 2.0
    chunk: int = 1024
    remaining: int | None = None
    hang_max: float = 300.0
    rate: float = DEFAULT_THROTTLE_RATE
    link: Link | None = None


class NoResponse(Exception):
    """The fault drops the connection (with a TCP RST if `rst`): there is no response to return."""

    def __init__(self, rst: bool = False) -> None:
        super().__init__()
        self.rst = rst


async def answer_before_body(
    fault: Fault, request: web.Request, handler: Handler, hang_release: threading.Event
) -> web.StreamResponse | None:
    """The faults that act before any body: an answer, or NoResponse; None when the fault is in how the body
    is sent (then `throttle` has already waited its `delay`)."""
    if fault.mode in ("status_500", "status_503"):
        return web.Response(status=int(fault.mode[-3:]), text="fault injected\n")
    if fault.mode in ("refuse", "reset"):
        raise NoResponse(rst=fault.mode == "reset")
    if fault.mode == "hang":
        deadline = time.monotonic() + fault.hang_max
        while not hang_release.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110 (threading.Event)
            await asyncio.sleep(0.05)
        raise NoResponse()
    if fault.mode in ("slow_headers", "throttle"):
        await asyncio.sleep(fault.delay)
        if fault.mode == "slow_headers":
            return await handler(request)
    return None


def close_connection(request: web.Request, *, rst: bool) -> None:
    """Drop the client's connection: with a TCP RST (SO_LINGER 0) if `rst`, else a clean close."""
    transport = request.transport
    if transport is None:
        return
    if not rst:
        transport.close()
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
