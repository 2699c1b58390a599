"""PlainEncoder: header blocks that any HPACK decoder reads back exactly, without touching its dynamic table."""

from __future__ import annotations

import warnings

import h2.config
import hpack
import pytest

with warnings.catch_warnings():  # mitmproxy imports pyparsing code that warns of deprecations
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.proxy.layers.http._http_h2 import BufferedH2Connection

    from ruststash import mitm_tuning
from ruststash.hpack_plain import PlainEncoder

RESPONSE = [
    (b":status", b"200"),
    (b"content-type", b"application/octet-stream"),
    (b"etag", b'"5f1c0e4a9b"'),
    (b"last-modified", b"Mon, 07 Dec 2026 10:51:07 GMT"),
    (b"cache-control", b"public,max-age=31536000,immutable"),
    (b"content-length", b"53124"),
    (b"x-cache", b"HIT"),
]


def decoded(block: bytes, decoder: hpack.Decoder | None = None) -> list[tuple[bytes, bytes]]:
    decoder = decoder or hpack.Decoder()
    return [(name, value) for name, value in decoder.decode(block, raw=True)]


def test_a_response_block_decodes_to_the_same_fields_and_leaves_the_peers_table_empty() -> None:
    encoder, decoder = PlainEncoder(), hpack.Decoder()
    for _ in range(3):  # the same fields again: still no table entries on either side
        assert decoded(encoder.encode(RESPONSE), decoder) == RESPONSE
    assert len(decoder.header_table.dynamic_entries) == 0
    assert len(encoder.header_table.dynamic_entries) == 0


def test_fields_of_the_static_table_are_one_byte_and_nothing_is_huffman_coded() -> None:
    encoder = PlainEncoder()
    assert encoder.encode([(b":status", b"200")]) == bytes([0x80 | 8])  # static index 8
    assert encoder.encode([(b":status", b"304")]) == bytes([0x80 | 11])
    # content-length has static index 28: literal without indexing, 4-bit prefix (15 + 13), plain value
    assert encoder.encode([(b"content-length", b"42")]) == bytes([0x0F, 13, 2]) + b"42"
    assert encoder.encode([(b"x-cache", b"HIT")]) == bytes([0x00, 7]) + b"x-cache" + bytes([3]) + b"HIT"


def test_long_values_and_names_use_multi_byte_lengths() -> None:
    fields = [(b"x-" + b"n" * 200, b"v" * 20_000), (b"etag", b"")]
    assert decoded(PlainEncoder().encode(fields)) == fields


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 128, 129, 255, 256])
def test_lengths_at_the_edge_of_the_one_byte_prefix_read_back(length: int) -> None:
    fields = [(b"x" * max(length, 1), b"v" * length), (b"etag", b"e" * length)]
    assert decoded(PlainEncoder().encode(fields)) == fields


def test_static_names_at_the_edge_of_the_four_bit_prefix_read_back() -> None:
    # static indexes 14 (:status 500), 15 (accept-charset), 16 (accept-encoding): 15 no longer fits 4 bits
    fields = [(b"accept-charset", b"utf-8"), (b"accept-encoding", b"br"), (b":status", b"418")]
    assert decoded(PlainEncoder().encode(fields)) == fields


def test_sensitive_fields_are_sent_never_indexed() -> None:
    block = PlainEncoder().encode([hpack.NeverIndexedHeaderTuple(b"cookie", b"session=1"), (b"a", b"b", True)])
    fields = hpack.Decoder().decode(block, raw=True)
    assert [(n, v) for n, v in fields] == [(b"cookie", b"session=1"), (b"a", b"b")]
    assert all(isinstance(field, hpack.NeverIndexedHeaderTuple) for field in fields)
    assert block[0] & 0xF0 == 0x10  # cookie's static name index, never-indexed pattern


def test_text_fields_are_utf8() -> None:
    assert decoded(PlainEncoder().encode([("x-name", "v\u00fc")])) == [(b"x-name", b"v\xc3\xbc")]


def test_a_table_size_the_peer_asked_for_is_signalled_first() -> None:
    encoder, decoder = PlainEncoder(), hpack.Decoder()
    encoder.header_table_size = 256
    block = encoder.encode([(b":status", b"200")])
    assert block[0] & 0xE0 == 0x20  # a dynamic table size update leads the block
    assert decoded(block, decoder) == [(b":status", b"200")]
    assert decoder.header_table.maxsize == 256
    assert encoder.encode([(b":status", b"200")]) == bytes([0x88])  # signalled once


@pytest.mark.parametrize("fields", [{b":status": b"200", b"x-a": b"1"}])
def test_a_dict_is_encoded_as_hpack_does_it(fields: dict[bytes, bytes]) -> None:
    assert dict(decoded(PlainEncoder().encode(fields))) == fields


def test_mitmproxys_http2_connections_get_the_plain_encoder() -> None:
    mitm_tuning.install()
    connection = BufferedH2Connection(h2.config.H2Configuration(client_side=False))
    assert isinstance(connection.encoder, PlainEncoder)
