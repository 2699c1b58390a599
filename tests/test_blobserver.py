"""The loopback blob server with real sockets: a stored body is sent from the handle its reply owns, even
after its file was unlinked, and the handle is closed however the transfer ends."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from pathlib import Path

import pytest

from ruststash.blobserver import BlobServer
from ruststash.replies import Outcome, Reply
from ruststash.store import OpenBlob

SIZE = 16 << 20


def open_blob(path: Path) -> OpenBlob:
    data = path.read_bytes()
    return OpenBlob(os.open(path, os.O_RDONLY), hashlib.sha256(data).hexdigest())


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


async def get(port: int, path: str, read_all: bool, extra: str = "") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: blobs\r\nConnection: close\r\n{extra}\r\n".encode())
        await writer.drain()
        if read_all:
            return await asyncio.wait_for(reader.read(), 30)
        data = await asyncio.wait_for(reader.read(4096), 30)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # a reset, as when mitmproxy's client cancels its stream
        return data
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.fixture
def body_file(tmp_path: Path) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(SIZE))
    return path


async def test_an_unlinked_body_is_sent_whole_and_its_handle_closed(body_file: Path) -> None:
    blobs = BlobServer()
    await blobs.start()
    try:
        blob = open_blob(body_file)
        fd = blob.fd
        assert fd is not None
        expected = await asyncio.to_thread(body_file.read_bytes)
        await asyncio.to_thread(body_file.unlink)  # evicted after it was opened
        ticket = blobs.issue(Reply(200, (("content-type", "application/x-xz"),), b"", Outcome.HIT, file=blob))
        reply = await get(blobs.port, ticket, read_all=True)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == expected
        assert closed(fd)
    finally:
        await blobs.close()


async def test_a_client_that_goes_away_leaves_no_error_and_no_open_handle(
    body_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blobs = BlobServer()
    await blobs.start()
    try:
        for _ in range(5):
            blob = open_blob(body_file)
            fd = blob.fd
            assert fd is not None
            ticket = blobs.issue(Reply(200, (), b"", Outcome.HIT, file=blob))
            with caplog.at_level(logging.INFO):
                assert (await get(blobs.port, ticket, read_all=False)).startswith(b"HTTP/1.1 200")
                for _ in range(100):  # bounded: the server notices the reset within a few turns
                    if closed(fd):
                        break
                    await asyncio.sleep(0.05)
            assert closed(fd), "the handle stayed open after the client went away"
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
    finally:
        await blobs.close()


async def test_a_stale_body_carries_its_warning(body_file: Path) -> None:
    """A stored body served stale says so as an in-memory answer does: X-Cache STALE and warn-code 110."""
    blobs = BlobServer()
    await blobs.start()
    try:
        for outcome in (Outcome.STALE, Outcome.HIT):
            ticket = blobs.issue(Reply(200, (), b"", outcome, file=open_blob(body_file)))
            head = (await get(blobs.port, ticket, read_all=True)).partition(b"\r\n\r\n")[0].decode().lower()
            assert f"x-cache: {outcome.value.lower()}" in head
            assert ('warning: 110 ruststash "response is stale"' in head) is (outcome is Outcome.STALE)
    finally:
        await blobs.close()


async def test_a_body_keeps_its_stored_validators_and_the_service_alone_weighs_conditions(body_file: Path) -> None:
    """The service answers 304s itself, against the stored validators; what reaches the blob server is sent
    whole with those validators, whatever conditions the client's request carries."""
    stored = (("etag", '"stored"'), ("last-modified", "Tue, 14 Apr 2026 10:00:00 GMT"))
    conditions = "If-None-Match: *\r\nIf-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n"
    blobs = BlobServer()
    await blobs.start()
    try:
        ticket = blobs.issue(Reply(200, stored, b"", Outcome.HIT, file=open_blob(body_file)))
        head, _, body = (await get(blobs.port, ticket, read_all=True, extra=conditions)).partition(b"\r\n\r\n")
        lines = head.decode().lower().split("\r\n")
        assert lines[0] == "http/1.1 200 ok" and len(body) == SIZE
        assert {'etag: "stored"', "last-modified: tue, 14 apr 2026 10:00:00 gmt"} <= set(lines)
    finally:
        await blobs.close()
