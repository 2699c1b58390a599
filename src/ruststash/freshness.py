"""HTTP caching arithmetic: Cache-Control, freshness lifetime and conditional requests. Pure."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class CacheControl:
    max_age: int | None = None
    s_maxage: int | None = None
    no_store: bool = False
    no_cache: bool = False
    private: bool = False
    immutable: bool = False


def parse_cache_control(value: str | None) -> CacheControl:
    if not value:
        return CacheControl()
    fields: dict[str, str | None] = {}
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            fields[name.lower()] = arg.strip().strip('"') if arg else None

    def seconds(name: str) -> int | None:
        raw = fields.get(name)
        # ASCII digits only (str.isdigit accepts "²"), and few enough of them to be a number of seconds
        return int(raw) if raw is not None and re.fullmatch(r"[0-9]{1,10}", raw) else None

    return CacheControl(
        max_age=seconds("max-age"),
        s_maxage=seconds("s-maxage"),
        no_store="no-store" in fields,
        no_cache="no-cache" in fields,
        private="private" in fields,
        immutable="immutable" in fields,
    )


def freshness_lifetime(cache_control: str | None) -> float:
    """Seconds a shared cache may serve a response without revalidating (RFC 9111 §4.2.1): s-maxage, then
    max-age; no-cache or nothing at all means revalidate every time."""
    cc = parse_cache_control(cache_control)
    if cc.no_cache:
        return 0.0
    if cc.s_maxage is not None:
        return float(cc.s_maxage)
    if cc.max_age is not None:
        return float(cc.max_age)
    return 0.0


def is_fresh(stored_at: float, lifetime: float, now: float) -> bool:
    if math.isinf(lifetime):
        return True
    return 0 <= now - stored_at < lifetime


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches(if_none_match: str, etag: str | None) -> bool:
    """Weak comparison (RFC 9110 §13.1.2): `*` or any listed tag equal to `etag` ignoring `W/`."""
    if etag is None:
        return False
    candidates = [c for c in if_none_match.split(",") if c.strip()]
    if any(c.strip() == "*" for c in candidates):
        return True
    return _opaque(etag) in {_opaque(c) for c in candidates}


def not_modified(request_headers: Mapping[str, str], etag: str | None, last_modified: str | None) -> bool:
    """Whether a client's conditional GET is satisfied by a stored response with these validators.
    `request_headers` has lowercase names. If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2)."""
    if (inm := request_headers.get("if-none-match")) is not None:
        return etag_matches(inm, etag)
    ims = request_headers.get("if-modified-since")
    if ims is None or last_modified is None:
        return False
    try:
        return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(ims)
    except (TypeError, ValueError, OverflowError):  # a client's absurd date is simply not a match
        return False


# What a client may send to make its request conditional (RFC 9110 §13.1).
CONDITIONAL_HEADERS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range")


def range_applies(request_headers: Mapping[str, str], etag: str | None, last_modified: str | None) -> bool:
    """Whether a client's Range is to be honoured for a stored body with these validators (RFC 9110 §13.1.5):
    always without If-Range; with it, only if it names this body exactly (a strong ETag, or the very
    Last-Modified date). Otherwise the client resumes a body that may have changed: it gets the whole."""
    if_range = request_headers.get("if-range")
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith(('"', "W/")):
        return etag is not None and not etag.startswith("W/") and if_range == etag.strip()
    return last_modified is not None and if_range == last_modified.strip()
