"""One structured (logfmt) line per request: method, host, path, outcome, status, bytes, duration."""

from __future__ import annotations

import logging
import re

logger = logging.getLogger("ruststash.access")

# What makes a value need quotes (besides being empty or unprintable).
_NEEDS_QUOTES = re.compile(r'[ "=\\]')


def _quote(value: str) -> str:
    if value and value.isprintable() and _NEEDS_QUOTES.search(value) is None:
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped) + '"'


def request_line(
    method: str, host: str, path: str, outcome: str, status: int | None, size: int, seconds: float, note: str
) -> str:
    """The logfmt line: each field `name=value`, the value quoted and escaped when it is empty or holds a
    space, a quote, `=`, a backslash or an unprintable character; no status (None) or no note: no field."""
    line = f"method={_quote(method)} host={_quote(host)} path={_quote(path)} outcome={_quote(outcome)}"
    if status is not None:
        line += f" status={status}"
    line += f" bytes={size} ms={seconds * 1000:.1f}"
    return f"{line} note={_quote(note)}" if note else line


def log_request(
    *,
    method: str,
    host: str,
    path: str,
    outcome: str,
    status: int | None,
    size: int,
    seconds: float,
    note: str = "",
) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info(request_line(method, host, path, outcome, status, size, seconds, note))
