"""BackgroundServer, the thread every test origin runs in: stopping it drops every connection, including one
still in its TLS handshake. Such a connection used to outlive its test and be closed by the garbage collector
some tests later, failing an unrelated test with a ResourceWarning."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import Iterator

import pytest
from aiohttp import web

from tests.origins.server import BackgroundServer
from tests.origins.tls import OriginTLS


@pytest.fixture
def origin(origin_tls: OriginTLS) -> Iterator[BackgroundServer]:
    server = BackgroundServer(web.Application(), origin_tls.server_context())
    server.start()
    yield server
    server.close()


def accepted(server: BackgroundServer) -> None:
    """Let the origin's loop turn a few times, so a connection the kernel holds is accepted."""
    server.call(lambda: asyncio.sleep(0.2))


def test_stop_drops_a_connection_that_never_finished_its_tls_handshake(origin: BackgroundServer) -> None:
    with socket.create_connection(("127.0.0.1", origin.port), timeout=10) as client:
        accepted(origin)
        origin.stop()
        # The origin closed its end at once, not after asyncio's 60 s handshake timeout.
        client.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(1) == b""


def test_close_leaves_no_transport_for_the_garbage_collector(origin: BackgroundServer) -> None:
    """With warnings as errors (pyproject.toml), a transport closed by the collector fails this test."""
    with socket.create_connection(("127.0.0.1", origin.port), timeout=10):
        accepted(origin)
        origin.close()
        gc.collect()
