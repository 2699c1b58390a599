"""Hosts not on the cache list are tunnelled untouched: the client sees the origin's own certificate."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest
from aiohttp import web

from tests.conftest import ProxyFactory
from tests.origins.server import BackgroundServer
from tests.origins.tls import OriginTLS


@pytest.fixture
def other_origin(origin_tls: OriginTLS) -> Iterator[BackgroundServer]:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello from the other origin")

    app = web.Application()
    app.router.add_get("/", hello)
    server = BackgroundServer(app, origin_tls.server_context())
    server.start()
    yield server
    server.close()


def open_tunnel(proxy_port: int, host: str, port: int) -> socket.socket:
    """A socket through which the proxy has agreed to CONNECT to `host`:`port`."""
    raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = raw.recv(4096)
        assert chunk, "proxy closed the connection"
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply
    return raw


def connect_through(proxy_port: int, host: str, port: int, context: ssl.SSLContext) -> tuple[bytes, bytes]:
    """CONNECT through the proxy, do TLS with `host`, GET /; return (peer certificate DER, response)."""
    with context.wrap_socket(open_tunnel(proxy_port, host, port), server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := tls.recv(4096):
            response += chunk
    return der, response


@pytest.mark.e2e
def test_unlisted_host_is_tunnelled_with_its_own_certificate(
    start_proxy: ProxyFactory, origin_tls: OriginTLS, other_origin: BackgroundServer
) -> None:
    proxy = start_proxy([])
    # Trusting only the origin's CA (not ruststash's) proves the TLS session is the origin's own.
    der, response = connect_through(proxy.port, "127.0.0.1", other_origin.port, origin_tls.client_context())
    assert der == origin_tls.server_cert_der()
    assert b"hello from the other origin" in response
    assert b"x-cache" not in response.lower()


@pytest.mark.e2e
def test_listed_host_is_intercepted_with_ruststash_certificate(
    start_proxy: ProxyFactory, origin_tls: OriginTLS, other_origin: BackgroundServer
) -> None:
    proxy = start_proxy(["--upstream", f"crates.io={other_origin.url}", "--upstream-ca", str(origin_tls.ca_pem)])
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    der, response = connect_through(proxy.port, "crates.io", 443, context)
    assert der != origin_tls.server_cert_der()
    # Not a cacheable URL: forwarded to the mapped origin and marked PASS.
    assert b"hello from the other origin" in response
    assert b"x-cache: PASS" in response


def negotiated_protocol(proxy_port: int, host: str, context: ssl.SSLContext) -> str | None:
    """CONNECT through the proxy and do TLS with `host` offering HTTP/2 and HTTP/1.1: what was chosen."""
    context.set_alpn_protocols(["h2", "http/1.1"])
    with context.wrap_socket(open_tunnel(proxy_port, host, 443), server_hostname=host) as tls:
        return tls.selected_alpn_protocol()


@pytest.mark.e2e
def test_toolchain_host_speaks_http1_and_the_index_http2(start_proxy: ProxyFactory) -> None:
    """Large archives go out faster over HTTP/1.1 through mitmproxy (policy.DEFAULT_HTTP1_HOSTS); cargo's hosts
    keep HTTP/2 for its hundreds of parallel requests."""
    proxy = start_proxy([])
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    assert negotiated_protocol(proxy.port, "static.rust-lang.org", context) == "http/1.1"
    assert negotiated_protocol(proxy.port, "index.crates.io", context) == "h2"
    assert negotiated_protocol(proxy.port, "static.crates.io", context) == "h2"


@pytest.mark.e2e
def test_a_mirror_named_with_http1_host_speaks_http1(start_proxy: ProxyFactory) -> None:
    """A rustup mirror named with --cache-host gets HTTP/2 like any host, unless --http1-host names it too."""
    mirror = "rust-mirror.example"
    for extra, expected in (([], "h2"), (["--http1-host", mirror.upper()], "http/1.1")):
        proxy = start_proxy(["--cache-host", mirror, *extra], name=f"proxy-{expected.replace('/', '')}")
        context = ssl.create_default_context(cafile=str(proxy.ca_cert))
        assert negotiated_protocol(proxy.port, mirror, context) == expected, extra
        assert negotiated_protocol(proxy.port, "index.crates.io", context) == "h2"
