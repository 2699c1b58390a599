"""The values the cache service works with: a client's request, the reply it gets, and how it went."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from .errors import UpstreamError
from .store import Entry, OpenBlob

if TYPE_CHECKING:
    from .fill import Fill

# Response headers worth keeping with a stored body: what a client needs and what revalidation needs.
STORED_HEADERS = ("content-type", "cache-control", "etag", "last-modified", "expires", "content-disposition")
VALIDATOR_HEADERS = ("etag", "last-modified", "cache-control", "expires")
NOT_STORED_FULL = "not stored: the cache disk is full"
# Sent with every answer served stale (RFC 7234's warn-code 110).
STALE_WARNING = ("warning", '110 ruststash "Response is Stale"')


class Outcome(StrEnum):
    HIT = "HIT"
    MISS = "MISS"
    REVALIDATED = "REVALIDATED"
    STALE = "STALE"
    PASS = "PASS"
    ERROR = "ERROR"


def header_dict(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """A request's header fields as ClientRequest keeps them: names lowercased, a repeated header's values
    joined with ", " in order; bytes decoded as mitmproxy decodes them (UTF-8, surrogateescape)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in fields:
        name = raw_name.decode("utf-8", "surrogateescape").lower()
        value = raw_value.decode("utf-8", "surrogateescape")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


@dataclass(frozen=True)
class ClientRequest:
    method: str
    scheme: str
    host: str
    port: int
    path: str
    headers: dict[str, str]  # lowercase names

    @property
    def origin(self) -> str:
        default = 443 if self.scheme == "https" else 80
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        return f"{self.scheme}://{netloc}"

    @property
    def url(self) -> str:
        return self.origin + self.path


@dataclass(frozen=True)
class Reply:
    """What to answer. The body is `body`, or a stored body opened for reading `file` (the reply owns the
    handle: whoever ends up not sending it closes it), or a download in progress `fill` (the last two are
    streamed to the client, never held in memory)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    outcome: Outcome
    note: str = ""
    file: OpenBlob | None = None
    fill: Fill | None = None
    size: int | None = None
    forward: bool = False  # let mitmproxy stream it from upstream, not stored (the cache disk is full)

    @property
    def streamed(self) -> bool:
        return self.file is not None or self.fill is not None


def error_reply(status: int, reason: str) -> Reply:
    body = f"ruststash: {reason}\n".encode()
    return Reply(status, (("content-type", "text/plain; charset=utf-8"),), body, Outcome.ERROR, reason)


def selected(headers: tuple[tuple[str, str], ...], names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((k.lower(), v) for k, v in headers if k.lower() in names)


@dataclass(frozen=True)
class Fetched:
    """How one upstream fetch ended: a stored entry (with the body, to spare a re-read), an answer that is
    not stored (a 404, a no-store body), or a failure."""

    entry: Entry | None = None
    outcome: Outcome = Outcome.MISS
    body: bytes | None = None
    reply: Reply | None = None
    error: UpstreamError | None = None
