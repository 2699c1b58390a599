"""The project's error hierarchy. Library exceptions become these where we call the library; these become
HTTP responses (in the addon) or one-line messages with exit code 2 (in the CLI)."""

from __future__ import annotations


class RuststashError(Exception):
    """Base class: the message is one line meant for a person."""


class ConfigError(RuststashError):
    """A bad option value or an unusable directory, detected before serving."""


class StartupError(RuststashError):
    """The proxy could not start: a port in use, a missing permission."""


class UpstreamError(RuststashError):
    """Upstream could not give an answer. `status` is the HTTP status to give the client (502 or 504);
    `cause` is one of a small fixed set (see `metrics.UPSTREAM_CAUSES`) for counting."""

    def __init__(self, reason: str, status: int = 502, cause: str = "other") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.cause = cause


class IntegrityError(RuststashError):
    """A body's digest is not the one upstream published for it."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: sha256 {actual} does not match the published {expected}")
        self.expected = expected
        self.actual = actual


class StoreError(RuststashError):
    """The store could not be read or written."""


class BodyGone(StoreError):
    """A stored body was removed (a purge, an eviction) between its lookup and its read."""


class DiskFull(StoreError):
    """The cache directory's filesystem is full: serve without storing until space returns."""
