"""DATA frames written straight into an HTTP/2 connection's outgoing buffer.

h2 serialises each frame it sends through hyperframe and then joins them: a DATA frame's payload is copied
out of a view into bytes, joined with its (empty) padding, joined with the frame header, joined with the
other frames of the call and appended to the buffer: four copies of every body byte before `data_to_send`
copies the buffer once more. With bodies answered from memory (51 MiB of crates in a cargo fetch) that was
about a tenth of the proxy's main thread. On mitmproxy's HTTP/2 connections (BufferedH2Connection) a DATA
frame without padding is now written as its 9-byte header (RFC 9113 4.1, packed as hyperframe packs it)
followed by its payload, appended to the buffer directly; every other frame is serialised by hyperframe as
before. h2's check that no frame is longer than the peer allows stays (it was an `assert`).

Re-check when h2 or hyperframe is upgraded (both are pinned in constraints.txt).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from hyperframe.frame import DataFrame, Frame
from mitmproxy.proxy.layers.http._http_h2 import BufferedH2Connection

# length (24 bits, as 16 + 8), type, flags, stream id (the reserved bit clear)
FRAME_HEADER = struct.Struct(">HBBBL")
END_STREAM = 0x01
_INSTALLED = "_ruststash_direct_data_frames"


def install() -> None:
    if getattr(BufferedH2Connection, _INSTALLED, False):
        return
    BufferedH2Connection._prepare_for_sending = prepare_for_sending  # type: ignore[method-assign,assignment]
    setattr(BufferedH2Connection, _INSTALLED, True)


def prepare_for_sending(self: BufferedH2Connection, frames: Sequence[Frame]) -> None:
    """H2Connection._prepare_for_sending, DATA frames without padding appended without copies of their own."""
    out = self._data_to_send
    limit = self.max_outbound_frame_size
    for frame in frames:
        if type(frame) is DataFrame and not frame.pad_length and "PADDED" not in frame.flags:
            data = frame.data
            size = frame.body_len = len(data)
            flags = END_STREAM if "END_STREAM" in frame.flags else 0
            out += FRAME_HEADER.pack(size >> 8, size & 0xFF, DataFrame.type, flags, frame.stream_id & 0x7FFFFFFF)
            out += data
        else:
            out += frame.serialize()
        if frame.body_len > limit:
            raise ValueError(f"an HTTP/2 frame of {frame.body_len} bytes, past the peer's {limit}")
