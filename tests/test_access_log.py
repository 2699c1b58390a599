"""The access log's logfmt line: plain values as they are, anything a logfmt reader could misread quoted."""

from __future__ import annotations

import logging

import pytest

from ruststash.access_log import log_request, request_line


def test_a_plain_request_is_one_line_of_plain_fields() -> None:
    line = request_line("GET", "index.crates.io", "/se/rd/serde", "HIT", 200, 1234, 0.00042, "")
    assert line == "method=GET host=index.crates.io path=/se/rd/serde outcome=HIT status=200 bytes=1234 ms=0.4"


def test_no_status_and_no_note_leave_their_fields_out_and_a_note_is_quoted() -> None:
    line = request_line("GET", "h", "/p", "ERROR", None, 0, 1.5, "upstream gone: refused")
    assert line == 'method=GET host=h path=/p outcome=ERROR bytes=0 ms=1500.0 note="upstream gone: refused"'


@pytest.mark.parametrize(
    ("path", "written"),
    [
        ("/a b", '"/a b"'),
        ('/a"b', '"/a\\"b"'),
        ("/a=b", '"/a=b"'),
        ("/a\\b", '"/a\\\\b"'),
        ("/a\nb\x1b", '"/a\\x0ab\\x1b"'),
        ("", '""'),
    ],
)
def test_a_hostile_path_cannot_forge_fields_or_lines(path: str, written: str) -> None:
    line = request_line("GET", "h", path, "HIT", 200, 1, 0.0, "")
    assert line == f"method=GET host=h path={written} outcome=HIT status=200 bytes=1 ms=0.0"
    assert "\n" not in line


def test_log_request_writes_the_line_at_info(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ruststash.access"):
        log_request(method="GET", host="h", path="/p", outcome="MISS", status=200, size=3, seconds=0.002)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["method=GET host=h path=/p outcome=MISS status=200 bytes=3 ms=2.0"]
