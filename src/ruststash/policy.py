"""Which URL is which kind, its cache key and its freshness rule. Pure: no I/O, no clock.

Facts (cargo 1.95, crates.io): sparse index files live at `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd` below the
index root, lowercase; cargo fetches `config.json` there first and learns the download URL (`dl`) from it;
crates.io's downloads are `static.crates.io/crates/{name}/{version}/download` (name in its original case) and
the older `/crates/{name}/{name}-{version}.crate` form. Both forms name one immutable body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, StrEnum

# crates.io names: ASCII alphanumerics, `-` and `_`, at most 64 characters (cargo's own limit is the same).
_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_VERSION = r"[0-9][0-9A-Za-z.+-]{0,63}"
_LOWER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_INDEX_FILE = re.compile(
    r"^(?P<prefix>(?:/[A-Za-z0-9._~-]+)*)/(?:1/(?P<n1>[a-z0-9_-])|2/(?P<n2>[a-z0-9_-]{2})"
    r"|3/(?P<c3>[a-z0-9_-])/(?P<n3>[a-z0-9_-]{3})|(?P<a>[a-z0-9_-]{2})/(?P<b>[a-z0-9_-]{2})/(?P<n4>[a-z0-9_-]{4,64}))$"
)
_CONFIG_JSON = re.compile(r"^(?P<prefix>(?:/[A-Za-z0-9._~-]+)*)/config\.json$")


class Kind(StrEnum):
    CONFIG = "config"  # a sparse registry's config.json
    INDEX = "index"  # a sparse index file
    CRATE = "crate"  # a .crate download
    PASS = "pass"  # forwarded untouched


class Rule(Enum):
    REVALIDATE = "revalidate"  # fresh for upstream's max-age, then revalidated; stale served on failure
    IMMUTABLE = "immutable"  # cached forever, checked against a published digest before it is stored
    NONE = "none"


@dataclass(frozen=True)
class CrateRef:
    """A crate version and where its registry's index file (which holds its `cksum`) lives."""

    name: str
    version: str
    index_host: str
    index_path: str

    @property
    def index_key(self) -> str:
        return f"{Kind.INDEX}:{self.index_host}{self.index_path}"


@dataclass(frozen=True)
class Decision:
    kind: Kind
    key: str = ""
    rule: Rule = Rule.NONE
    crate: CrateRef | None = None


PASS = Decision(Kind.PASS)


def index_path(name: str) -> str:
    """The sparse index path of a crate name, e.g. `se/rd/serde` (without the leading slash)."""
    lower = name.lower()
    if len(lower) <= 2:
        return f"{len(lower)}/{lower}"
    if len(lower) == 3:
        return f"3/{lower[0]}/{lower}"
    return f"{lower[0:2]}/{lower[2:4]}/{lower}"


@dataclass(frozen=True)
class Registry:
    """A sparse registry: its index root (host + path prefix) and a matcher for its download URLs."""

    index_host: str
    index_prefix: str
    dl_host: str
    dl_patterns: tuple[re.Pattern[str], ...]

    def crate_ref(self, name: str, version: str) -> CrateRef:
        return CrateRef(name, version, self.index_host, f"{self.index_prefix}/{index_path(name)}")


def registry_from_dl(index_host: str, index_prefix: str, dl: str) -> Registry | None:
    """Build a registry from its config.json `dl` value, or None if `dl` is not a URL we can match.

    `dl` without markers means `{dl}/{crate}/{version}/download`; markers are `{crate}`, `{version}`,
    `{prefix}`, `{lowerprefix}` and `{sha256-checksum}` (cargo's registry documentation)."""
    match = re.fullmatch(r"https?://([A-Za-z0-9.-]+)(?::\d+)?(/[^?#]*)?", dl.strip())
    if not match:
        return None
    host, path = match.group(1).lower(), (match.group(2) or "")
    markers = ("{crate}", "{version}", "{prefix}", "{lowerprefix}", "{sha256-checksum}")
    if not any(marker in path for marker in markers):
        path = path.rstrip("/") + "/{crate}/{version}/download"
    pattern = _template_regex(path)
    return Registry(index_host, index_prefix, host, (pattern,)) if pattern else None


def _template_regex(template: str) -> re.Pattern[str] | None:
    pieces = re.split(r"(\{crate\}|\{version\}|\{prefix\}|\{lowerprefix\}|\{sha256-checksum\})", template)
    seen: set[str] = set()
    out = ["^"]
    for piece in pieces:
        if piece in ("{crate}", "{version}"):
            group = piece[1:-1]
            out.append(f"(?P={group})" if group in seen else f"(?P<{group}>{_NAME if group == 'crate' else _VERSION})")
            seen.add(group)
        elif piece in ("{prefix}", "{lowerprefix}"):
            out.append(r"[A-Za-z0-9_-]{1,2}(?:/[A-Za-z0-9_-]{1,2})?")
        elif piece == "{sha256-checksum}":
            out.append("[0-9a-f]{64}")
        else:
            out.append(re.escape(piece))
    if "crate" not in seen or "version" not in seen:
        return None
    return re.compile("".join(out) + "$")


CRATES_IO = Registry(
    index_host="index.crates.io",
    index_prefix="",
    dl_host="static.crates.io",
    dl_patterns=(
        re.compile(rf"^/crates/(?P<crate>{_NAME})/(?P<version>{_VERSION})/download$"),
        re.compile(rf"^/crates/(?P<crate>{_NAME})/(?P=crate)-(?P<version>{_VERSION})\.crate$"),
    ),
)
# crates.io's API answers this with a redirect to static.crates.io; it names the same immutable body.
_CRATES_IO_API_DOWNLOAD = re.compile(rf"^/api/v1/crates/(?P<crate>{_NAME})/(?P<version>{_VERSION})/download$")


def classify(method: str, host: str, path: str, registries: tuple[Registry, ...]) -> Decision:
    """Decide what to do with a request to a cached host. `path` is the raw request target (with query)."""
    if method != "GET" or not _plain_path(path):
        return PASS
    host = host.lower()
    for registry in registries:
        if registry.dl_host != host:
            continue
        for pattern in registry.dl_patterns:
            if m := pattern.match(path):
                return _crate_decision(registry.crate_ref(m.group("crate"), m.group("version")))
    if host == "crates.io" and (m := _CRATES_IO_API_DOWNLOAD.match(path)):
        return _crate_decision(CRATES_IO.crate_ref(m.group("crate"), m.group("version")))
    if _CONFIG_JSON.match(path):
        return Decision(Kind.CONFIG, f"{Kind.CONFIG}:{host}{path}", Rule.REVALIDATE)
    if (m := _INDEX_FILE.match(path)) and _index_name_consistent(m):
        return Decision(Kind.INDEX, f"{Kind.INDEX}:{host}{path}", Rule.REVALIDATE)
    return PASS


def _plain_path(path: str) -> bool:
    """Only plain absolute paths are cached: no query, no escapes, no dot segments, no empty segments."""
    if not path.startswith("/") or any(c in path for c in "?#%\\") or "//" in path:
        return False
    return all(segment not in (".", "..") for segment in path.split("/"))


def _crate_decision(crate: CrateRef) -> Decision:
    key = f"{Kind.CRATE}:{crate.index_host}{crate.index_path}/{crate.version}"
    return Decision(Kind.CRATE, key, Rule.IMMUTABLE, crate)


def _index_name_consistent(m: re.Match[str]) -> bool:
    """`3/a/abc` and `ab/cd/abcd` must agree with the name they end in, or the path is not an index file."""
    if m.group("n1") or m.group("n2"):
        return True
    if name := m.group("n3"):
        return bool(_LOWER_NAME.fullmatch(name)) and m.group("c3") == name[0]
    name = m.group("n4")
    return bool(_LOWER_NAME.fullmatch(name)) and m.group("a") == name[0:2] and m.group("b") == name[2:4]


def config_prefix(path: str) -> str | None:
    """The index root path of a config.json path (`/api/config.json` -> `/api`), or None."""
    m = _CONFIG_JSON.match(path)
    return m.group("prefix") if m else None
