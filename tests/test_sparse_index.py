from __future__ import annotations

import json

from ruststash.sparse_index import config_dl, config_problem, index_file_problem, published_cksum

A = "a" * 64
B = "b" * 64


def test_published_cksum_finds_the_version() -> None:
    lines = [
        json.dumps({"name": "foo", "vers": "1.0.0", "cksum": A}),
        "not json",
        json.dumps({"name": "foo", "vers": "1.0.1", "cksum": B, "yanked": True}),
    ]
    body = "\n".join(lines).encode()
    assert published_cksum(body, "1.0.0") == A
    assert published_cksum(body, "1.0.1") == B
    assert published_cksum(body, "2.0.0") is None


def test_published_cksum_ignores_malformed_digests() -> None:
    assert published_cksum(json.dumps({"vers": "1.0.0", "cksum": "../../etc"}).encode(), "1.0.0") is None


def test_config_dl() -> None:
    assert config_dl(b'{"dl": "https://static.crates.io/crates", "api": "https://crates.io"}') == (
        "https://static.crates.io/crates"
    )
    assert config_dl(b"[]") is None
    assert config_dl(b"{") is None


def test_index_file_problem() -> None:
    good = "\n".join(json.dumps({"name": "foo", "vers": v, "cksum": A}) for v in ("1.0.0", "1.0.1")).encode()
    assert index_file_problem(good + b"\n") is None
    assert index_file_problem(b"<html>captive portal</html>") == "line 1 is not JSON"
    assert index_file_problem(b'{"name": "foo"}') == "line 1 is not an index entry"
    assert index_file_problem(bytes(255 - b for b in good)) == "not UTF-8"


def test_config_problem() -> None:
    assert config_problem(b'{"dl": "https://static.crates.io/crates"}') is None
    assert config_problem(b"<html>") is not None
