"""h2_frames: mitmproxy's HTTP/2 connections write DATA frames straight into their buffer, byte for byte what h2
and hyperframe would write, and still refuse a frame longer than the peer allows."""

from __future__ import annotations

import warnings

import h2.config
import h2.connection
import pytest
from hyperframe.frame import DataFrame, Frame, HeadersFrame, WindowUpdateFrame

with warnings.catch_warnings():  # mitmproxy imports code that warns of deprecations
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.proxy.layers.http._http_h2 import BufferedH2Connection

from ruststash import h2_frames

BODY = bytes(range(256)) * 100


def connection() -> BufferedH2Connection:
    return BufferedH2Connection(h2.config.H2Configuration(client_side=False))


def frames() -> list[Frame]:
    return [
        DataFrame(1, memoryview(BODY)[:16384]),  # a view of a body, as h2_answers and mitm_tuning send them
        DataFrame(1, memoryview(BODY)[16384:16390], flags=["END_STREAM"]),
        DataFrame(3, b"", flags=["END_STREAM"]),
        DataFrame(5, b"padded", pad_length=3, flags=["PADDED"]),  # left to hyperframe
        HeadersFrame(7, b"\x88", flags=["END_HEADERS", "END_STREAM"]),
        WindowUpdateFrame(0, window_increment=1000),
        DataFrame(2**31 - 1, b"last stream id"),
    ]


def test_frames_are_written_byte_for_byte_as_h2_writes_them() -> None:
    ours, theirs = connection(), connection()
    h2_frames.prepare_for_sending(ours, frames())
    h2.connection.H2Connection._prepare_for_sending(theirs, frames())
    assert bytes(ours._data_to_send) == bytes(theirs._data_to_send)
    assert len(ours._data_to_send) > 16384


def test_what_is_written_parses_back_to_the_same_frames() -> None:
    ours = connection()
    h2_frames.prepare_for_sending(ours, frames())
    written, parsed = memoryview(bytes(ours._data_to_send)), []
    while written:
        frame, length = Frame.parse_frame_header(written[:9])
        frame.parse_body(written[9 : 9 + length])
        parsed.append(frame)
        written = written[9 + length :]
    assert [(type(f), f.stream_id, set(f.flags)) for f in parsed] == [
        (type(f), f.stream_id, set(f.flags)) for f in frames()
    ]
    data = [f.data for f in parsed if isinstance(f, DataFrame)]
    assert data == [BODY[:16384], BODY[16384:16390], b"", b"padded", b"last stream id"]


def test_a_frame_longer_than_the_peer_allows_is_refused() -> None:
    ours = connection()
    with pytest.raises(ValueError, match="16385 bytes"):
        h2_frames.prepare_for_sending(ours, [DataFrame(1, b"x" * (ours.max_outbound_frame_size + 1))])


def test_installed_on_mitmproxys_http2_connections() -> None:
    h2_frames.install()
    assert BufferedH2Connection._prepare_for_sending is h2_frames.prepare_for_sending
