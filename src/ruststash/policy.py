"""Which URL is which kind, its cache key and its freshness rule. Pure: no I/O, no clock.

Facts (rustup 1.29, static.rust-lang.org): rustup fetches `dist/channel-rust-{channel}.toml.sha256`, then the
`.toml`, then archives under `dist/YYYY-MM-DD/` whose sha256 the manifest gives; dated directories never
change. Pinned toolchains use `channel-rust-1.95.0.toml`, `channel-rust-1.95.toml` or
`dist/2026-05-01/channel-rust-nightly.toml`. Self-update reads `rustup/release-stable.toml`.

Facts (cargo 1.95, crates.io): sparse index files live at `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd` below the
index root, lowercase; cargo fetches `config.json` there first and learns the download URL (`dl`) from it;
crates.io's downloads are `static.crates.io/crates/{name}/{version}/download` (name in its original case) and
the older `/crates/{name}/{name}-{version}.crate` form. Both forms name one immutable body.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_CHANNEL = r"(?:stable|beta|nightly|[0-9]+\.[0-9]+(?:\.[0-9]+)?(?:-beta(?:\.[0-9]+)?)?)"
_MANIFEST = re.compile(
    rf"^/dist/(?:(?P<date>{_DATE})/)?channel-rust-(?P<channel>{_CHANNEL})\.toml(?P<ext>\.sha256|\.asc)?$"
)
_DATED_FILE = re.compile(rf"^/dist/{_DATE}/[A-Za-z0-9][A-Za-z0-9._+-]{{0,200}}$")
_ARCHIVE_SUFFIX = re.compile(r"\.(?:tar\.(?:gz|xz|zst)|zip|msi|pkg|exe)$")
_TRIPLE = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,80}"
# A rustup mirror may serve static.rust-lang.org's tree below a path prefix (RUSTUP_DIST_SERVER=
# https://host/rust-static): the prefix is everything before the first `/dist/` or `/rustup/` segment.
_DIST_TREE = re.compile(r"^(?P<prefix>(?:/[A-Za-z0-9._~-]+)*?)(?P<rest>/(?:dist|rustup)/.*)$")
_RUSTUP_RELEASE = re.compile(r"^/rustup/release-(?:stable|beta)\.toml$")
_RUSTUP_INIT = re.compile(rf"^/rustup/dist/{_TRIPLE}/rustup-init(?:\.exe)?(?P<ext>\.sha256)?$")
_RUSTUP_ARCHIVE = re.compile(
    rf"^/rustup/archive/[0-9][0-9A-Za-z.+-]{{0,40}}/{_TRIPLE}/rustup-init(?:\.exe)?(?P<ext>\.sha256)?$"
)
# A manifest naming one exact release (1.95.0) or one date never changes once published.
PINNED_MANIFEST_LIFETIME = 86400.0
# Hosts that serve a few large files (toolchain archives) to each client: their clients are answered over
# HTTP/1.1 when they offer it. HTTP/2 multiplexing gains rustup nothing, and mitmproxy sends an HTTP/2 body
# in 16 KiB frames, each through its whole layer stack: a cached 100 MiB archive went to curl at 150-170
# MiB/s over HTTP/2 and 220-280 MiB/s over HTTP/1.1. cargo's hosts keep HTTP/2: over HTTP/1.1 cargo opens at
# most two connections to a proxy (curl's per-host limit, which cargo sets to 2, counts the proxy as the
# host), so it could have only two requests in flight. `serve --http1-host` adds a rustup mirror.
DEFAULT_HTTP1_HOSTS = frozenset({"static.rust-lang.org"})


class Kind(StrEnum):
    CONFIG = "config"  # a sparse registry's config.json
    INDEX = "index"  # a sparse index file
    CRATE = "crate"  # a .crate download
    MANIFEST = "manifest"  # a rustup channel manifest (.toml)
    MANIFEST_SHA256 = "manifest_sha256"  # its .sha256: served from the same stored pair
    DIST_FILE = "dist"  # other small static.rust-lang.org files (.asc, release-stable.toml, rustup-init)
    ARCHIVE = "archive"  # toolchain archives and rustup-init releases: large, immutable, streamed
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
    scope: str = ""  # the credential scope of the request (see `scoped`)

    @property
    def index_key(self) -> str:
        return f"{Kind.INDEX}:{self.index_host}{self.index_path}{_scope_suffix(self.scope)}"


@dataclass(frozen=True)
class ManifestRef:
    """A channel manifest and its .sha256, which are stored and served as one pair."""

    toml_path: str  # /dist/channel-rust-stable.toml, or below a mirror's prefix
    prefix: str = ""  # the mirror's path prefix (/rust-static), or ""

    @property
    def sha256_path(self) -> str:
        return self.toml_path + ".sha256"

    @property
    def file_name(self) -> str:
        return self.toml_path.rsplit("/", 1)[1]

    def archive_request_path(self, listed: str) -> str:
        """The path through which rustup asks for an archive that this manifest lists at the URL path `listed`.
        rustup puts its dist server (mirror prefix included) in place of `https://static.rust-lang.org`, so
        `/dist/D/x.tar.xz` is asked for below the manifest's prefix; a mirror that rewrote its manifest's URLs
        to itself already lists them there."""
        tree = split_dist_prefix(listed)
        return self.prefix + tree[1] if tree is not None else listed


@dataclass(frozen=True)
class Decision:
    kind: Kind
    key: str = ""
    rule: Rule = Rule.NONE
    crate: CrateRef | None = None
    manifest: ManifestRef | None = None
    # For REVALIDATE kinds: the shortest time a stored copy counts as fresh, whatever upstream says
    # (a manifest for one exact release such as 1.95.0 never changes in practice).
    min_lifetime: float = 0.0


PASS = Decision(Kind.PASS)


def _scope_suffix(scope: str) -> str:
    return f"#cred:{scope}" if scope else ""


def scoped(decision: Decision, scope: str) -> Decision:
    """The same decision for a request that carries credentials: its entries are kept apart from every
    other credential's (a private registry's index and crates are never served across users)."""
    if not scope or decision.kind is Kind.PASS:
        return decision
    crate = replace(decision.crate, scope=scope) if decision.crate is not None else None
    return replace(decision, key=decision.key + _scope_suffix(scope), crate=crate)


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
    if (tree := split_dist_prefix(path)) is not None and (decision := _rust_dist(host, *tree)).kind is not Kind.PASS:
        return decision
    if _CONFIG_JSON.match(path):
        return Decision(Kind.CONFIG, f"{Kind.CONFIG}:{host}{path}", Rule.REVALIDATE)
    if (m := _INDEX_FILE.match(path)) and _index_name_consistent(m):
        return Decision(Kind.INDEX, f"{Kind.INDEX}:{host}{path}", Rule.REVALIDATE)
    return PASS


# What cargo sends to a registry's web API to change its index: publish, yank, unyank.
_REGISTRY_WRITE = re.compile(rf"^(?:/[A-Za-z0-9._~-]+)*/api/v1/crates/(?:new|{_NAME}/{_VERSION}/(?:yank|unyank))$")


def is_registry_write(method: str, path: str) -> bool:
    """A request through which a registry's index changes (`cargo publish`, `yank`, `yank --undo`)."""
    return method in ("PUT", "DELETE") and _REGISTRY_WRITE.match(path) is not None


def carries_body(headers: Mapping[str, str]) -> bool:
    """Whether a request (lowercase header names) has a body: one is not cached whatever its method, as a GET
    with a body means nothing a cache can know (RFC 9110 §9.3.1). cargo and rustup never send one."""
    length = headers.get("content-length", "0").strip()
    return "transfer-encoding" in headers or length != "0"


def client_protocol(
    sni: str | None, offers: Sequence[bytes], http1_hosts: frozenset[str] = DEFAULT_HTTP1_HOSTS
) -> bytes | None:
    """The ALPN protocol to answer an intercepted client with, or None to let mitmproxy choose."""
    if sni is not None and sni.lower() in http1_hosts and b"http/1.1" in offers:
        return b"http/1.1"
    return None


def _plain_path(path: str) -> bool:
    """Only plain absolute paths are cached: no query, no escapes, no dot segments, no empty segments."""
    if not path.startswith("/") or any(c in path for c in "?#%\\") or "//" in path:
        return False
    if not path.isascii() or not path.isprintable() or " " in path:
        return False
    return all(segment not in (".", "..") for segment in path.split("/"))


def split_dist_prefix(path: str) -> tuple[str, str] | None:
    """`/rust-static/dist/x` -> (`/rust-static`, `/dist/x`); `/dist/x` -> (``, `/dist/x`); None if the path
    has no `/dist/` or `/rustup/` segment."""
    m = _DIST_TREE.match(path)
    return (m.group("prefix"), m.group("rest")) if m else None


def _rust_dist(host: str, prefix: str, rest: str) -> Decision:
    """Decide a path of static.rust-lang.org's tree, `rest`, served below `prefix` on `host`."""
    path = prefix + rest
    if m := _MANIFEST.match(rest):
        toml_path = path.removesuffix(m.group("ext") or "")
        pinned = m.group("date") is not None or m.group("channel").count(".") == 2
        if m.group("ext") == ".asc":
            return Decision(Kind.DIST_FILE, f"{Kind.DIST_FILE}:{host}{path}", Rule.REVALIDATE)
        kind = Kind.MANIFEST_SHA256 if m.group("ext") else Kind.MANIFEST
        return Decision(
            kind,
            f"{Kind.MANIFEST}:{host}{toml_path}",
            Rule.IMMUTABLE if m.group("date") else Rule.REVALIDATE,
            manifest=ManifestRef(toml_path, prefix),
            min_lifetime=PINNED_MANIFEST_LIFETIME if pinned else 0.0,
        )
    if _DATED_FILE.match(rest):
        if _ARCHIVE_SUFFIX.search(rest):
            return Decision(Kind.ARCHIVE, f"{Kind.ARCHIVE}:{host}{path}", Rule.IMMUTABLE)
        return Decision(Kind.DIST_FILE, f"{Kind.DIST_FILE}:{host}{path}", Rule.IMMUTABLE)
    if m := _RUSTUP_ARCHIVE.match(rest):
        kind = Kind.DIST_FILE if m.group("ext") else Kind.ARCHIVE
        return Decision(kind, f"{kind}:{host}{path}", Rule.IMMUTABLE)
    if _RUSTUP_INIT.match(rest) or _RUSTUP_RELEASE.match(rest):
        return Decision(Kind.DIST_FILE, f"{Kind.DIST_FILE}:{host}{path}", Rule.REVALIDATE)
    return PASS


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
