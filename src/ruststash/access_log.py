"""One structured (logfmt) line per request: method, host, path, outcome, status, bytes, duration."""

from __future__ import annotations

import logging

logger = logging.getLogger("ruststash.access")


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\\') and value.isprintable():
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped) + '"'


def format_line(fields: dict[str, object]) -> str:
    return " ".join(f"{name}={_quote(str(value))}" for name, value in fields.items() if value not in (None, ""))


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
        fields: dict[str, object] = {
            "method": method,
            "host": host,
            "path": path,
            "outcome": outcome,
            "status": status,
            "bytes": size,
            "ms": f"{seconds * 1000:.1f}",
            "note": note,
        }
        logger.info(format_line(fields))
