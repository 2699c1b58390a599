from __future__ import annotations

import math

import pytest

from ruststash.freshness import (
    etag_matches,
    freshness_lifetime,
    is_fresh,
    not_modified,
    parse_cache_control,
    range_applies,
)


def test_parse_cache_control() -> None:
    cc = parse_cache_control('public, max-age=600, immutable, private="x"')
    assert cc.max_age == 600 and cc.immutable and cc.private and not cc.no_store


@pytest.mark.parametrize(
    ("value", "lifetime"),
    [
        ("public,max-age=600", 600),
        ("max-age=600, s-maxage=60", 60),
        ("no-cache, max-age=600", 0),
        (None, 0),
        ("max-age=abc", 0),
    ],
)
def test_freshness_lifetime(value: str | None, lifetime: float) -> None:
    assert freshness_lifetime(value) == lifetime


def test_is_fresh() -> None:
    assert is_fresh(1000, 600, 1599)
    assert not is_fresh(1000, 600, 1600)
    assert not is_fresh(1000, 0, 1000)
    assert is_fresh(1000, math.inf, 10**12)
    assert not is_fresh(1000, 600, 900)  # a clock that went backwards does not make a copy fresh


@pytest.mark.parametrize(
    ("inm", "etag", "match"),
    [
        ('"a"', '"a"', True),
        ('W/"a"', '"a"', True),
        ('"b", "a"', 'W/"a"', True),
        ("*", '"a"', True),
        ('"b"', '"a"', False),
        ('"a"', None, False),
    ],
)
def test_etag_matches(inm: str, etag: str | None, match: bool) -> None:
    assert etag_matches(inm, etag) is match


def test_not_modified_prefers_if_none_match() -> None:
    lm = "Tue, 01 Sep 2026 10:00:00 GMT"
    assert not_modified({"if-none-match": '"a"'}, '"a"', lm)
    assert not not_modified({"if-none-match": '"b"', "if-modified-since": lm}, '"a"', lm)
    assert not_modified({"if-modified-since": "Wed, 02 Sep 2026 10:00:00 GMT"}, None, lm)
    assert not not_modified({"if-modified-since": "Mon, 31 Aug 2026 10:00:00 GMT"}, None, lm)
    assert not not_modified({"if-modified-since": "garbage"}, None, lm)
    assert not not_modified({}, '"a"', lm)


LM = "Tue, 14 Apr 2026 10:00:00 GMT"


@pytest.mark.parametrize(
    ("headers", "etag", "last_modified", "applies"),
    [
        ({}, None, None, True),  # no If-Range: any Range is honoured
        ({"if-range": '"a"'}, '"a"', LM, True),
        ({"if-range": '"b"'}, '"a"', LM, False),  # another body: the whole one
        ({"if-range": 'W/"a"'}, 'W/"a"', LM, False),  # weak tags never match for If-Range
        ({"if-range": '"a"'}, 'W/"a"', LM, False),
        ({"if-range": '"a"'}, None, LM, False),
        ({"if-range": LM}, '"a"', LM, True),  # the very date
        ({"if-range": "Tue, 14 Apr 2026 11:00:00 GMT"}, '"a"', LM, False),  # a later date is no match either
        ({"if-range": LM}, '"a"', None, False),
        ({"if-range": "garbage"}, '"a"', LM, False),
    ],
)
def test_range_applies(headers: dict[str, str], etag: str | None, last_modified: str | None, applies: bool) -> None:
    assert range_applies(headers, etag, last_modified) is applies
