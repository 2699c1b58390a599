"""Hostile clients against a running ruststash: malformed HTTP/1, oversized heads, bad chunking, broken HTTP/2,
slowloris, odd CONNECT targets and plain-HTTP requests for hosts off the cache list.

One proxy (in front of a fake crates.io on 127.0.0.1) serves the whole module. After every attack the proxy must
have answered with a 4xx or closed the connection (every read here has a timeout, so a hang fails), still be
running, answer /healthz, serve a normal request (CONNECT + TLS + GET https://index.crates.io/config.json,
trusting the proxy's CA), have logged no traceback, and have grown its resident memory by less than
`RSS_GROWTH_LIMIT`. Nothing is sent anywhere but 127.0.0.1 (see `UNRESOLVABLE` for the one name lookup).
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from tests.conftest import ProxyFactory
from tests.harness import ProxyProcess, free_port
from tests.origins.crates_io import FakeCratesIo
from tests.origins.registry import Registry
from tests.origins.tls import OriginTLS

pytestmark = pytest.mark.e2e

RSS_GROWTH_LIMIT = 100 * 1024 * 1024
READ_TIMEOUT = 5.0
# A name under the reserved `.invalid` TLD never resolves: the proxy's lookup fails (the system resolver is
# asked, nothing else is contacted) and it must answer with a clean error (502) rather than hang or crash.
UNRESOLVABLE = "nonexistent.invalid"
CACHED_HOST = "index.crates.io"

# HTTP/2 frame types (RFC 9113 §6)
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4


# --- the proxy under attack ----------------------------------------------------------------------------------


@dataclass
class Target:
    proxy: ProxyProcess
    origin: FakeCratesIo
    baseline_rss: int

    @property
    def pid(self) -> int:
        assert self.proxy.process is not None
        return self.proxy.process.pid


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, edge_registry: Registry, origin_tls: OriginTLS
) -> Iterator[Target]:
    origin = FakeCratesIo(edge_registry, origin_tls)
    proxy = ProxyProcess(
        tmp_path_factory.mktemp("hostile"),
        [
            "--upstream",
            f"index.crates.io={origin.index_url}",
            "--upstream",
            f"static.crates.io={origin.static_url}",
            "--upstream-ca",
            str(origin_tls.ca_pem),
        ],
    )
    try:
        proxy.start()
        assert proxy.process is not None
        # Warm up (TLS certificate generation, the first fetch and store) before taking the baseline.
        for _ in range(3):
            assert https_get(proxy, "/config.json")[0] == 200
        yield Target(proxy, origin, rss_bytes(proxy.process.pid))
    finally:
        code = proxy.stop()
        origin.close()
    log = proxy.log()
    assert code in (0, -15), f"ruststash exited with {code}:\n{log[-4000:]}"


@pytest.fixture
def attack(target: Target) -> Iterator[Target]:
    """Run one attack, then check that the proxy survived it unharmed."""
    log_offset = len(target.proxy.log())
    yield target
    assert_still_serving(target, log_offset)


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) * 1024


def assert_still_serving(target: Target, log_offset: int) -> None:
    proxy = target.proxy
    assert proxy.process is not None and proxy.process.poll() is None, f"proxy died:\n{proxy.log()[-4000:]}"
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin_port}/healthz", timeout=READ_TIMEOUT) as r:
        assert r.status == 200
    status, _, body = https_get(proxy, "/config.json")
    assert status == 200 and b'"dl"' in body, (status, body[:200])
    new_log = proxy.log()[log_offset:]
    assert "Traceback" not in new_log, new_log[-4000:]
    grown = rss_bytes(target.pid) - target.baseline_rss
    assert grown < RSS_GROWTH_LIMIT, f"proxy RSS grew by {grown / 2**20:.0f} MiB"


# --- raw client helpers ----------------------------------------------------------------------------------------


def connect(proxy: ProxyProcess, timeout: float = READ_TIMEOUT) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def read_until_closed(sock: socket.socket, deadline: float, limit: int = 1 << 20) -> bytes:
    """Everything the peer sends until it closes, `limit` bytes, or `deadline` (then AssertionError: a hang)."""
    data = b""
    while len(data) < limit:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no close within the deadline; got {data[:300]!r}") from None
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data


def read_head(sock: socket.socket, deadline: float) -> bytes:
    """Bytes up to the end of a response head (or whatever came before the peer closed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no response head within the deadline; got {data[:300]!r}") from None
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data


def status_of(reply: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", reply)
    return int(match.group(1)) if match else None


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send, tolerating a proxy that has already answered and closed (a refusal is what we want)."""
    with contextlib.suppress(ConnectionResetError, BrokenPipeError, TimeoutError, ssl.SSLError):
        sock.sendall(data)


def read_reply(sock: socket.socket, deadline: float, idle: float = 1.0) -> bytes:
    """What the proxy answers: everything until it closes, or a response head followed by `idle` seconds of
    silence (a kept-alive connection). Nothing at all by `deadline` is a hang: AssertionError."""
    data = b""
    while True:
        wait = deadline - time.monotonic()
        if b"\r\n\r\n" in data:
            wait = min(wait, idle)
        sock.settimeout(max(0.05, wait))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if b"\r\n\r\n" in data:
                return data
            raise AssertionError(f"neither an answer nor a close within the deadline; got {data[:300]!r}") from None
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return data
        if not chunk:
            return data
        data += chunk


def exchange(proxy: ProxyProcess, data: bytes, timeout: float = READ_TIMEOUT) -> bytes:
    """Send `data` on a fresh connection to the proxy port and read the answer (see `read_reply`)."""
    deadline = time.monotonic() + timeout
    with connect(proxy, timeout) as sock:
        send_quietly(sock, data)
        return read_reply(sock, deadline)


def assert_refused(reply: bytes, also: tuple[int, ...] = ()) -> None:
    """A 4xx (or one of `also`), or the connection closed with nothing said."""
    status = status_of(reply)
    assert reply == b"" or status is not None, reply[:300]
    assert status is None or 400 <= status < 500 or status in also, reply[:300]


def proxy_context(proxy: ProxyProcess, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def open_tunnel(proxy: ProxyProcess, host: str = CACHED_HOST, alpn: list[str] | None = None) -> ssl.SSLSocket:
    """CONNECT to an intercepted host and do TLS with the proxy (trusting its CA)."""
    raw = connect(proxy)
    raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
    head = read_head(raw, time.monotonic() + READ_TIMEOUT)
    assert status_of(head) == 200, head
    return proxy_context(proxy, alpn).wrap_socket(raw, server_hostname=host)


def https_get(proxy: ProxyProcess, path: str, headers: str = "") -> tuple[int | None, bytes, bytes]:
    """A normal HTTPS GET through the proxy: (status, head, body)."""
    with open_tunnel(proxy) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {CACHED_HOST}\r\n{headers}Connection: close\r\n\r\n".encode())
        reply = read_until_closed(tls, time.monotonic() + READ_TIMEOUT * 2, limit=1 << 24)
    head, _, body = reply.partition(b"\r\n\r\n")
    return status_of(reply), head, body


def tunnel_exchange(proxy: ProxyProcess, data: bytes, timeout: float = READ_TIMEOUT) -> bytes:
    """Send raw bytes inside an intercepted TLS tunnel and read the answer (see `read_reply`)."""
    deadline = time.monotonic() + timeout
    with open_tunnel(proxy) as tls:
        send_quietly(tls, data)
        return read_reply(tls, deadline)


# --- HTTP/1 request lines and heads on the proxy port -------------------------------------------------------

MALFORMED = [
    # (Empty lines alone are not here: a server may skip empty lines before a request line, RFC 9112 §2.2.)
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"GET / FTP/1.0\r\n\r\n",
    b"\x00\x01\x02\xff\xfe\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://\x00/ HTTP/1.1\r\n\r\n",
    b"GET http:/// HTTP/1.1\r\n\r\n",
    b"GET http://[::1/ HTTP/1.1\r\n\r\n",
    b"GET http://a b/ HTTP/1.1\r\n\r\n",
    b"GET http://" + UNRESOLVABLE.encode() + b":99999/ HTTP/1.1\r\n\r\n",
    b"GET http://" + UNRESOLVABLE.encode() + b"/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
    b"GET / HTTP/1.1\r\n folded: header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n",
    b"\x16\x03\x01\x00\x48\x01\x00\x00\x44\x03\x03" + b"\x00" * 68,  # a TLS ClientHello where HTTP belongs
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 64,  # the HTTP/2 preface in the clear
]


def test_malformed_request_lines_are_refused(attack: Target) -> None:
    for request in MALFORMED:
        # 502: absolute-form requests for the unresolvable host may get as far as the lookup.
        assert_refused(exchange(attack.proxy, request), also=(502,))


def test_oversized_request_line_and_headers(attack: Target) -> None:
    megabyte = b"a" * (1 << 20)
    requests = [
        b"GET http://" + UNRESOLVABLE.encode() + b"/" + megabyte + b" HTTP/1.1\r\n\r\n",
        b"GET http://" + megabyte + b".invalid/ HTTP/1.1\r\n\r\n",
        b"CONNECT " + megabyte + b":443 HTTP/1.1\r\n\r\n",
        b"GET http://" + UNRESOLVABLE.encode() + b"/ HTTP/1.1\r\nX-Big: " + megabyte + b"\r\n\r\n",
        b"GET http://" + UNRESOLVABLE.encode() + b"/ HTTP/1.1\r\n" + b"X-A: b\r\n" * 100_000 + b"\r\n",
    ]
    for request in requests:
        assert_refused(exchange(attack.proxy, request, timeout=15), also=(502,))


def test_oversized_requests_inside_an_intercepted_tunnel(attack: Target) -> None:
    """The same inside a tunnel to a cached host: the request reaches our addon, and a PASS is forwarded to the
    mapped origin (whose aiohttp refuses request lines over 8 KiB by answering 400 and closing at once). The
    client must get an answer or a close, not silence."""
    megabyte = b"a" * (1 << 20)
    for request in (
        b"GET /" + megabyte + b" HTTP/1.1\r\nHost: index.crates.io\r\nConnection: close\r\n\r\n",
        b"GET /config.json HTTP/1.1\r\nHost: index.crates.io\r\nConnection: close\r\nX-Big: " + megabyte + b"\r\n\r\n",
        b"GET /config.json HTTP/1.1\r\nHost: index.crates.io\r\nConnection: close\r\nIf-None-Match: "
        + b'"x",' * 250_000
        + b"\r\n\r\n",
    ):
        try:
            reply = tunnel_exchange(attack.proxy, request, timeout=10)
        except AssertionError as exc:
            raise AssertionError(f"{request[:40]!r}...: {exc}") from None
        assert_refused(reply, also=(200, 304, 502))


def test_a_request_line_that_arrives_in_pieces_is_still_http(attack: Target) -> None:
    """A slow client's first bytes inside the tunnel hold no newline yet. mitmproxy, with its default
    `rawtcp`, would take them for some other protocol and pipe them to the real host untouched (no cache,
    and here no answer at all); ruststash must treat them as the HTTP request they are."""
    with open_tunnel(attack.proxy) as tls:
        tls.sendall(b"GET /con")
        time.sleep(0.5)
        tls.sendall(b"fig.json HTTP/1.1\r\nHost: index.crates.io\r\nConnection: close\r\n\r\n")
        reply = read_until_closed(tls, time.monotonic() + READ_TIMEOUT)
    assert status_of(reply) == 200 and b'"dl"' in reply, reply[:300]


def test_endless_request_head_is_not_buffered_without_bound(start_proxy: ProxyFactory) -> None:
    """A client that never ends its request head must not make the proxy hold all of it: up to 200 MiB of one
    header line, sent for at most ~15 s, must be refused (or the connection closed) before the proxy's memory
    grows past the limit. (Its own proxy, with no upstream: the module's proxy keeps a clean baseline. Only
    /healthz is asked afterwards: a cached-host request would go to the real crates.io.)"""
    proxy = start_proxy([], name="endless")
    assert proxy.process is not None
    baseline = rss_bytes(proxy.process.pid)
    chunk = b"b" * (1 << 20)
    deadline = time.monotonic() + 15
    sent = 0
    with connect(proxy, timeout=2) as sock:
        sock.sendall(b"GET http://" + UNRESOLVABLE.encode() + b"/ HTTP/1.1\r\nX-Endless: ")
        with contextlib.suppress(ConnectionResetError, BrokenPipeError, TimeoutError):
            while sent < 200 * len(chunk) and time.monotonic() < deadline:
                sock.sendall(chunk)
                sent += len(chunk)
        time.sleep(0.5)
        grown = rss_bytes(proxy.process.pid) - baseline
    assert proxy.process.poll() is None
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin_port}/healthz", timeout=READ_TIMEOUT) as r:
        assert r.status == 200
    assert grown < RSS_GROWTH_LIMIT, f"{sent >> 20} MiB of request head grew the proxy by {grown >> 20} MiB"


# --- bodies: chunked encoding inside an intercepted tunnel --------------------------------------------------

BAD_CHUNKED = [
    b"ZZZ\r\nabc\r\n0\r\n\r\n",  # not hex
    b"-5\r\nabc\r\n0\r\n\r\n",
    b"3\r\nabcdef\r\n0\r\n\r\n",  # more data than the chunk size
    b"3;" + b"x" * 100_000 + b"\r\nabc\r\n0\r\n\r\n",  # a huge chunk extension
]
# Bodies that stop early: the proxy may wait for the rest (the client holds the connection), but must not
# answer with a 5xx of its own making or be harmed once the client goes away.
TRUNCATED_CHUNKED = [
    b"FFFFFFFFFFFFFFFFFFFFFFFF\r\nabc",  # an enormous chunk size
    b"7FFFFFFF\r\n" + b"a" * 100_000,
    b"3\r\nab",
]


def chunked_request(method: str, body: bytes) -> bytes:
    head = f"{method} HTTP/1.1\r\nHost: {CACHED_HOST}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head.encode() + body


def test_bad_chunked_bodies(attack: Target) -> None:
    for body in BAD_CHUNKED:
        for method in ("POST /api/v1/crates/new", "GET /config.json"):
            reply = tunnel_exchange(attack.proxy, chunked_request(method, body))
            assert_refused(reply, also=(200, 404, 405))
    for body in TRUNCATED_CHUNKED:
        for method in ("POST /api/v1/crates/new", "GET /config.json"):
            with open_tunnel(attack.proxy) as tls:
                send_quietly(tls, chunked_request(method, body))
                tls.settimeout(1.0)
                with contextlib.suppress(TimeoutError, ConnectionResetError, ssl.SSLError):
                    reply = tls.recv(65536)
                    status = status_of(reply)
                    assert status is None or status < 500, (method, body[:40], reply[:300])
    # Both framings at once (request smuggling): must not be taken as two requests.
    smuggle = (
        f"POST /x HTTP/1.1\r\nHost: {CACHED_HOST}\r\nConnection: close\r\nContent-Length: 4\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {CACHED_HOST}\r\n\r\n"
    ).encode()
    reply = tunnel_exchange(attack.proxy, smuggle)
    assert_refused(reply, also=(404, 405))
    assert reply.count(b"HTTP/1.1 ") <= 1, reply[:600]
    # Chunked garbage on the proxy port itself, for a host off the list.
    request = f"POST http://{UNRESOLVABLE}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n".encode()
    assert_refused(exchange(attack.proxy, request), also=(502,))


def test_chunked_trailers(attack: Target) -> None:
    """Trailers after the last chunk (legal HTTP/1.1, RFC 9112 §7.1.2): answered or refused, not a hang."""
    for trailers in (b"X-Trailer: y\r\n", b"X-Trailer: y\r\n" * 10_000):
        for method in ("POST /api/v1/crates/new", "GET /config.json"):
            reply = tunnel_exchange(attack.proxy, chunked_request(method, b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n"))
            assert_refused(reply, also=(200, 404, 405))


def test_a_get_with_a_large_body_on_a_cached_path_goes_to_the_origin_uncached(attack: Target) -> None:
    """A GET with a body (above the 1 MiB from which mitmproxy streams it) is no cache's business: it is passed
    to the host's `--upstream` origin like a POST, never to the cached host itself, nor stored."""
    body = b"b" * (3 << 20)
    head = (
        f"GET /config.json HTTP/1.1\r\nHost: {CACHED_HOST}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    before = len(attack.proxy.access())
    reply = tunnel_exchange(attack.proxy, head.encode() + body, timeout=READ_TIMEOUT * 2)
    assert status_of(reply) == 200 and b'"dl"' in reply, reply[:300]
    lines = [(r["path"], r["outcome"]) for r in attack.proxy.access()[before:]]
    assert lines == [("/config.json", "PASS")], lines


# --- HTTP/2 inside an intercepted tunnel -----------------------------------------------------------------------


def frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_client() -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    return conn


def request_headers(path: bytes = b"/config.json") -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", CACHED_HOST.encode()), (b":path", path)]


@contextlib.contextmanager
def h2_tunnel(proxy: ProxyProcess) -> Iterator[ssl.SSLSocket]:
    tls = open_tunnel(proxy, alpn=["h2", "http/1.1"])
    try:
        assert tls.selected_alpn_protocol() == "h2", "the proxy did not offer HTTP/2 to the client"
        yield tls
    finally:
        tls.close()


def h2_outcome(tls: ssl.SSLSocket, conn: h2.connection.H2Connection, deadline: float) -> list[h2.events.Event]:
    """Read until the proxy closes or sends GOAWAY; every event the client side parsed."""
    seen: list[h2.events.Event] = []
    while time.monotonic() < deadline:
        tls.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = tls.recv(65536)
        except TimeoutError:
            raise AssertionError(f"HTTP/2: neither GOAWAY nor close within the deadline; events {seen}") from None
        except (ConnectionResetError, ssl.SSLError):
            return seen
        if not data:
            return seen
        try:
            seen.extend(conn.receive_data(data))
        except h2.exceptions.ProtocolError:
            return seen  # what the proxy sent after our garbage need not make sense to a client
        if any(isinstance(e, h2.events.ConnectionTerminated) for e in seen):
            return seen
        with contextlib.suppress(OSError):
            tls.sendall(conn.data_to_send())
    raise AssertionError(f"HTTP/2: neither GOAWAY nor close within the deadline; events {seen}")


def assert_h2_refused(events: list[h2.events.Event]) -> None:
    for event in events:
        if isinstance(event, h2.events.ResponseReceived):
            status = int(dict(event.headers)[b":status"])
            assert 400 <= status < 500, events


H2_ATTACKS = {
    "frame longer than max frame size": frame(DATA, 0, 1, b"\x00" * 0xFFFFFF),
    "unknown frame longer than max frame size": frame(0xFF, 0xFF, 0x7FFFFFFF, b"\xff" * 0xFFFFFF),
    "settings with odd length": frame(SETTINGS, 0, 0, b"\x00\x01\x00"),
    "settings on a stream": frame(SETTINGS, 0, 1, b""),
    "ping with wrong length": frame(PING, 0, 0, b"\x00" * 7),
    "invalid hpack index": frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\xff\xff\x0f"),
    "hpack integer overflow": frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x7f" + b"\xff" * 50 + b"\x01"),
    "hpack string longer than block": frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x00\x7f\xff\x0fabc"),
    "headers on stream 0": frame(HEADERS, END_HEADERS | END_STREAM, 0, b"\x82"),
    "headers on an even stream": frame(HEADERS, END_HEADERS | END_STREAM, 2, b"\x82\x84\x87"),
    "padding longer than frame": frame(HEADERS, END_HEADERS | 0x8, 1, b"\xff\x82"),
    "continuation without headers": frame(CONTINUATION, END_HEADERS, 1, b"\x82"),
    "data on idle stream": frame(DATA, END_STREAM, 7, b"hello"),
    "rst on idle stream": frame(RST_STREAM, 0, 9, b"\x00\x00\x00\x08"),
    "window update of zero": frame(0x8, 0, 0, b"\x00\x00\x00\x00"),
    "goaway garbage": frame(GOAWAY, 0, 0, b"\xff" * 3),
}


@pytest.mark.parametrize("name", list(H2_ATTACKS))
def test_invalid_http2_frames(attack: Target, name: str) -> None:
    with h2_tunnel(attack.proxy) as tls:
        conn = h2_client()
        tls.sendall(conn.data_to_send() + H2_ATTACKS[name])
        assert_h2_refused(h2_outcome(tls, conn, time.monotonic() + READ_TIMEOUT))


H2_STALLS = {
    "garbage after preface": b"\xff" * 200,
    "16 MiB frame announced, half sent": frame(DATA, 0, 1, b"", length=0xFFFFFF) + b"\x00" * (8 << 20),
}


@pytest.mark.parametrize("name", list(H2_STALLS))
def test_http2_frame_announced_then_silence(attack: Target, name: str) -> None:
    """h2 waits for a whole frame before checking its length, so garbage that reads as a huge frame header
    leaves the proxy waiting for more. It may wait (the client holds the connection), but must not answer
    with an error of its own making, nor be harmed once the client goes away."""
    with h2_tunnel(attack.proxy) as tls:
        conn = h2_client()
        tls.sendall(conn.data_to_send() + H2_STALLS[name])
        with contextlib.suppress(TimeoutError, ConnectionResetError, ssl.SSLError, h2.exceptions.ProtocolError):
            tls.settimeout(1.0)
            while data := tls.recv(65536):
                assert_h2_refused(conn.receive_data(data))


def test_http2_illegal_header_values_and_missing_pseudo_headers(attack: Target) -> None:
    """mitmproxy lets some of these through (as HTTP/1 would): a normal answer is fine, a 5xx is not."""
    bad_requests = [
        request_headers(b"/config.json\n"),
        request_headers(b"/config.json\x00"),
        request_headers(b"config.json"),
        request_headers(b""),
        [(b":method", b"GET"), (b":path", b"/config.json")],
        [*request_headers(), (b"Upper-Case", b"x")],
        [*request_headers(), (b"connection", b"close")],
        [*request_headers(), (b"x", b" leading space")],
        [*request_headers(), (b"x", b"v" * (1 << 16))],
    ]
    for headers in bad_requests:
        with h2_tunnel(attack.proxy) as tls:
            conn = h2_client()
            conn.send_headers(1, headers, end_stream=True)
            tls.sendall(conn.data_to_send())
            events = read_h2_stream_end(tls, conn, 1, time.monotonic() + READ_TIMEOUT)
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    assert int(dict(event.headers)[b":status"]) < 500, (headers, events)


def read_h2_stream_end(
    tls: ssl.SSLSocket, conn: h2.connection.H2Connection, stream: int, deadline: float
) -> list[h2.events.Event]:
    """Events until `stream` ends (or is reset), the connection ends, or the proxy closes."""
    seen: list[h2.events.Event] = []
    while time.monotonic() < deadline:
        tls.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = tls.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, ssl.SSLError):
            return seen
        if not data:
            return seen
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return seen
        seen.extend(events)
        with contextlib.suppress(OSError):
            tls.sendall(conn.data_to_send())
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                return seen
            if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset) and event.stream_id == stream:
                return seen
    raise AssertionError(f"HTTP/2 stream {stream} neither ended nor was reset in time; events {seen}")


def test_http2_continuation_flood(attack: Target) -> None:
    """HEADERS without END_HEADERS, then an endless run of CONTINUATION frames (bounded here: 16 MiB)."""
    with h2_tunnel(attack.proxy) as tls:
        conn = h2_client()
        tls.sendall(conn.data_to_send() + frame(HEADERS, 0, 1, b"\x82\x84\x87"))
        block = frame(CONTINUATION, 0, 1, b"\x40\x01x\x01y" * 3000)
        deadline = time.monotonic() + 10
        with contextlib.suppress(ConnectionResetError, BrokenPipeError, TimeoutError, ssl.SSLError):
            for _ in range((16 << 20) // len(block)):
                if time.monotonic() > deadline:
                    break
                tls.sendall(block)
        assert_h2_refused(h2_outcome(tls, conn, time.monotonic() + READ_TIMEOUT))


def test_http2_rapid_reset_and_ping_flood(attack: Target) -> None:
    """Open and at once reset many streams for a cached URL; flood PINGs; the connection then still works or
    is closed cleanly, and the proxy stays healthy."""
    with h2_tunnel(attack.proxy) as tls:
        conn = h2_client()
        tls.sendall(conn.data_to_send())
        for batch in range(10):
            for i in range(50):
                stream = 1 + 2 * (batch * 50 + i)
                conn.send_headers(stream, request_headers(), end_stream=True)
                conn.reset_stream(stream)
            with contextlib.suppress(OSError):
                tls.sendall(conn.data_to_send())
        pings = b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(20_000))
        with contextlib.suppress(OSError):
            tls.sendall(pings)
        tls.settimeout(READ_TIMEOUT)
        deadline = time.monotonic() + READ_TIMEOUT
        # Drain whatever comes back for a moment (the proxy may GOAWAY an abusive client: that is fine).
        with contextlib.suppress(OSError, h2.exceptions.ProtocolError):
            while time.monotonic() < deadline:
                tls.settimeout(0.5)
                data = tls.recv(65536)
                if not data:
                    break
                events = conn.receive_data(data)
                if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                    break


# --- pipelining ------------------------------------------------------------------------------------------------

PIPELINED = 2000


def test_a_flood_of_pipelined_hits_is_answered_in_order_and_others_are_still_served(attack: Target) -> None:
    """Two thousand GETs for a cached file in one write on one HTTP/1.1 connection (each answered from memory,
    with hooks that never suspend, one after another's): every one is answered while another
    client's request is served meanwhile; no recursion builds up and nothing is left behind."""
    one = f"GET /config.json HTTP/1.1\r\nHost: {CACHED_HOST}\r\n\r\n".encode()
    last = f"GET /config.json HTTP/1.1\r\nHost: {CACHED_HOST}\r\nConnection: close\r\n\r\n".encode()
    other: list[int | None] = []
    with open_tunnel(attack.proxy) as tls:
        tls.sendall(one * (PIPELINED - 1) + last)
        meanwhile = threading.Thread(target=lambda: other.append(https_get(attack.proxy, "/config.json")[0]))
        meanwhile.start()
        reply = read_until_closed(tls, time.monotonic() + 60, limit=1 << 26)
        meanwhile.join(READ_TIMEOUT * 2)
    assert reply.count(b"HTTP/1.1 200 OK\r\n") == PIPELINED, reply[-300:]
    assert reply.count(b'"dl"') == PIPELINED
    assert other == [200]


# --- slowloris -------------------------------------------------------------------------------------------------


def test_slowloris_does_not_block_other_clients(attack: Target) -> None:
    """Twenty clients trickle a request head a byte at a time for ~3 s; meanwhile normal requests are served."""
    request = f"GET http://{UNRESOLVABLE}/ HTTP/1.1\r\nHost: {UNRESOLVABLE}\r\nX-Slow: ".encode() + b"z" * 1000
    stop = threading.Event()
    errors: list[BaseException] = []

    def trickle(sock: socket.socket) -> None:
        try:
            for byte in request:
                if stop.wait(0.05):
                    return
                sock.sendall(bytes([byte]))
        except OSError:
            return  # the proxy may give up on a slow client: fine
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    sockets = [connect(attack.proxy) for _ in range(20)]
    threads = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in sockets]
    try:
        for thread in threads:
            thread.start()
        started = time.monotonic()
        served = 0
        while time.monotonic() - started < 3:
            status, _, _ = https_get(attack.proxy, "/config.json")
            assert status == 200
            served += 1
        assert served >= 3, f"only {served} requests served in 3 s beside 20 slow clients"
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            sock.close()
    assert not errors, errors


def test_request_trickled_byte_by_byte_is_answered(attack: Target) -> None:
    port = free_port()  # nothing listens here: the proxy's connection is refused
    request = f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    deadline = time.monotonic() + 10
    with connect(attack.proxy) as sock:
        for byte in request:
            sock.sendall(bytes([byte]))
            time.sleep(0.02)
        reply = read_head(sock, deadline)
    assert status_of(reply) == 502, reply[:300]


# --- plain HTTP for hosts off the list, and odd CONNECT targets -------------------------------------------


def test_plain_http_for_unlisted_hosts_is_a_clean_error(attack: Target) -> None:
    closed = free_port()
    for url in (f"http://{UNRESOLVABLE}/", f"http://{UNRESOLVABLE}:8080/x?y=z", f"http://127.0.0.1:{closed}/"):
        reply = exchange(attack.proxy, f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert status_of(reply) == 502, (url, reply[:300])


CONNECT_TARGETS = [
    UNRESOLVABLE.encode(),  # no port
    UNRESOLVABLE.encode() + b":",
    UNRESOLVABLE.encode() + b":0",
    UNRESOLVABLE.encode() + b":65536",
    UNRESOLVABLE.encode() + b":99999999999999999999999",
    UNRESOLVABLE.encode() + b":-1",
    UNRESOLVABLE.encode() + b":443:443",
    b"nonexistent\x00.invalid:443",
    b"\x00:443",
    b":443",
    b"[::1:443",
    b"[zz::1]:443",
    b"index.crates.io\x00.invalid:443",
    b"index.crates.io:99999",
    b"index.crates.io:0",
    b"*:443",
    b"/index.crates.io:443",
    b"http://index.crates.io:443/",
    b"\xff\xfe:443",
]


@pytest.mark.parametrize("authority", CONNECT_TARGETS, ids=[repr(t)[2:-1][:40] for t in CONNECT_TARGETS])
def test_connect_to_odd_targets(attack: Target, authority: bytes) -> None:
    request = b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n"
    deadline = time.monotonic() + READ_TIMEOUT
    with connect(attack.proxy) as sock:
        send_quietly(sock, request)
        head = read_head(sock, deadline)
        if status_of(head) == 200:
            # The proxy connects lazily: the failure shows once the client speaks (a TLS hello here).
            hello = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"
            send_quietly(sock, hello)
            rest = read_until_closed(sock, deadline)
            assert rest == b"" or status_of(rest) in (None, 502) or (status_of(rest) or 0) >= 400, rest[:300]
        else:
            assert_refused(head, also=(502,))


def test_conditional_request_with_absurd_dates_on_a_cached_file(attack: Target) -> None:
    """If-Modified-Since is the client's: no date in it may turn a cached hit into an error."""
    for date in (
        "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
        "Mon, 01 Jan 2024 00:00:00 +99999999999999999999",
        "Mon, 01 Jan 0000 00:00:00 GMT",
        "x" * 8000,
    ):
        status, _, _ = https_get(attack.proxy, "/config.json", headers=f"If-Modified-Since: {date}\r\n")
        assert status in (200, 304), (date, status)
