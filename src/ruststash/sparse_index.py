"""Reading a sparse registry's files: the `cksum` of a version in an index file, `dl` in config.json. Pure."""

from __future__ import annotations

import json
import re

_SHA256 = re.compile(r"[0-9a-f]{64}")


def published_cksum(index_file: bytes, version: str) -> str | None:
    """The sha256 that the index file publishes for `version`, or None if it lists no such version.

    Each line is one JSON object per published version (cargo's registry index format); lines that do not
    parse are skipped, as cargo itself skips entries it cannot read."""
    for line in index_file.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict) and record.get("vers") == version:
            cksum = record.get("cksum")
            if isinstance(cksum, str) and _SHA256.fullmatch(cksum):
                return cksum
    return None


def config_dl(config_json: bytes) -> str | None:
    """The `dl` value of a registry's config.json, or None."""
    try:
        config = json.loads(config_json)
    except (ValueError, RecursionError):
        return None
    dl = config.get("dl") if isinstance(config, dict) else None
    return dl if isinstance(dl, str) else None


def index_file_problem(body: bytes) -> str | None:
    """Why `body` cannot be a sparse index file (each line a JSON object with `name`, `vers` and `cksum`),
    or None. A captive portal's HTML page or a corrupted transfer must not replace a good stored copy."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return f"line {number} is not JSON"
        if not isinstance(record, dict) or not {"name", "vers", "cksum"} <= record.keys():
            return f"line {number} is not an index entry"
    return None


def config_problem(body: bytes) -> str | None:
    """Why `body` cannot be a registry's config.json (a JSON object with a string `dl`), or None."""
    return None if config_dl(body) is not None else "not a JSON object with a `dl` URL"
