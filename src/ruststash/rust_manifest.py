"""Reading rustup's channel manifests and `.sha256` files. Pure.

A manifest (`manifest-version = "2"`) lists, per `[pkg.NAME.target.TRIPLE]`, `url`/`hash`, `xz_url`/`xz_hash`
and `zst_url`/`zst_hash`; rustup checks every archive against these, and so do we before storing one.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

_SHA256_LINE = re.compile(rb"^\s*([0-9a-fA-F]{64})(?:\s+\*?(\S.*))?\s*$")
_URL_HASH_FIELDS = (("url", "hash"), ("xz_url", "xz_hash"), ("zst_url", "zst_hash"))


def parse_sha256_file(body: bytes) -> str | None:
    """The digest in a `<hex>  <file name>` line (what static.rust-lang.org's `.sha256` files hold)."""
    lines = body.strip().splitlines()
    if len(lines) != 1:
        return None
    m = _SHA256_LINE.match(lines[0])
    return m.group(1).decode().lower() if m else None


def sha256_file_body(digest: str, file_name: str) -> bytes:
    return f"{digest}  {file_name}\n".encode()


def archive_hashes(manifest: bytes) -> dict[str, str]:
    """URL path -> sha256 for every archive the manifest lists. Raises ValueError if it is not a manifest."""
    try:
        data = tomllib.loads(manifest.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ValueError(f"not a TOML manifest: {type(exc).__name__}") from exc
    packages = data.get("pkg")
    if not isinstance(packages, dict):
        raise ValueError("no [pkg] tables: not a channel manifest")
    return dict(_pairs(packages))


def _pairs(packages: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for package in packages.values():
        targets = package.get("target") if isinstance(package, dict) else None
        if not isinstance(targets, dict):
            continue
        for target in targets.values():
            if not isinstance(target, dict):
                continue
            for url_field, hash_field in _URL_HASH_FIELDS:
                url, digest = target.get(url_field), target.get(hash_field)
                if isinstance(url, str) and isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
                    yield urlsplit(url).path, digest
