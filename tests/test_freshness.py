from __future__ import annotations

import math

import pytest

from ruststash.freshness import etag_matches, freshness_lifetime, is_fresh, not_modified, parse_cache_control


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
