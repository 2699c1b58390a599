"""`ruststash stats`, `ls` and `purge`: look into the store and trim it, beside a serving proxy or not.

They read the index without recording accesses. `purge` removes entries first and then only the bodies no
remaining entry points at (`Store.remove_entries`), so a crash in between leaves unreferenced bodies at worst
(`ruststash verify` removes those) and never an entry without its body.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from .errors import ConfigError
from .policy import Kind
from .store import Entry, Store

DEFAULT_ADMIN_URL = "http://127.0.0.1:9128"
KINDS = tuple(k.value for k in Kind if k not in (Kind.PASS, Kind.MANIFEST_SHA256))
_AGE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Outcomes that answered a client from the store.
FROM_CACHE = ("hit", "revalidated", "stale")


def parse_age(value: str, what: str) -> float:
    """`30d`, `12h`, `90m`, `45s`, `2w` -> seconds."""
    m = _AGE.fullmatch(value)
    if not m:
        raise ConfigError(f"{what} {value!r} is not an age such as 30d, 12h, 90m or 2w")
    return float(m.group(1)) * _AGE_UNITS[m.group(2)]


def kind_of(key: str) -> str:
    return key.split(":", 1)[0]


def host_of(key: str) -> str:
    return key.split(":", 1)[1].split("/", 1)[0] if ":" in key else ""


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def human_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for limit, unit in ((120, "s"), (7200, "m"), (172800, "h")):
        if seconds < limit:
            return f"{seconds / _AGE_UNITS[unit]:.0f}{unit}"
    return f"{seconds / 86400:.0f}d"


@dataclass(frozen=True)
class Filter:
    """Which entries `ls` and `purge` act on; every given criterion must hold."""

    kinds: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()  # globs on the whole key (`crate:*serde*`)
    older_than: float | None = None  # stored more than this many seconds ago
    unused_for: float | None = None  # not served or stored for this many seconds

    def __post_init__(self) -> None:
        for kind in self.kinds:
            if kind not in KINDS:
                raise ConfigError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")

    @property
    def empty(self) -> bool:
        return not (self.kinds or self.hosts or self.patterns) and self.older_than is None and self.unused_for is None

    def matches(self, entry: Entry, accessed_at: float, now: float) -> bool:
        if self.kinds and kind_of(entry.key) not in self.kinds:
            return False
        if self.hosts and host_of(entry.key) not in self.hosts:
            return False
        if self.patterns and not any(fnmatch.fnmatchcase(entry.key, p) for p in self.patterns):
            return False
        if self.older_than is not None and now - entry.stored_at < self.older_than:
            return False
        return self.unused_for is None or now - accessed_at >= self.unused_for


def selected(store: Store, chosen: Filter, now: float | None = None) -> Iterator[tuple[Entry, float]]:
    moment = time.time() if now is None else now
    for entry, accessed_at in store.entries():
        if chosen.matches(entry, accessed_at, moment):
            yield entry, accessed_at


# ------------------------------------------------------------------------------------------- stats


@dataclass
class KindFigures:
    entries: int = 0
    bytes: int = 0


@dataclass
class StoreStats:
    by_kind: dict[str, KindFigures] = field(default_factory=dict)
    entries: int = 0
    body_bytes: int = 0  # distinct bodies on disk (a body shared by two entries counts once)
    bodies: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "entries": self.entries,
            "bodies": self.bodies,
            "body_bytes": self.body_bytes,
            "by_kind": {kind: {"entries": f.entries, "bytes": f.bytes} for kind, f in sorted(self.by_kind.items())},
        }


def store_stats(store: Store) -> StoreStats:
    stats = StoreStats()
    digests: dict[str, int] = {}
    for entry, _ in store.entries():
        figures = stats.by_kind.setdefault(kind_of(entry.key), KindFigures())
        figures.entries += 1
        figures.bytes += entry.size
        stats.entries += 1
        digests[entry.digest] = entry.size
    stats.bodies = len(digests)
    stats.body_bytes = sum(digests.values())
    return stats


def render_store_stats(stats: StoreStats, directory: str) -> list[str]:
    lines = [
        f"cache {directory}: {stats.entries} entries, {stats.bodies} bodies, {human_size(stats.body_bytes)}",
        f"  {'kind':<16}{'entries':>9}{'bytes':>14}",
    ]
    for kind, figures in sorted(stats.by_kind.items()):
        lines.append(f"  {kind:<16}{figures.entries:>9}{human_size(figures.bytes):>14}")
    return lines


@dataclass(frozen=True)
class ProxyStats:
    requests: dict[str, int]  # outcome -> count (all kinds)
    hits: int
    total: int  # every request answered or failed, PASS aside

    @property
    def hit_ratio(self) -> float | None:
        return self.hits / self.total if self.total else None


def fetch_proxy_stats(admin_url: str, timeout: float = 3.0) -> ProxyStats | None:
    """The running proxy's counts since start, from its admin server's /api/stats; None if nothing answers."""
    url = admin_url.rstrip("/") + "/api/stats"
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--admin {admin_url!r} is not an http:// URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return parse_proxy_stats(body)


def parse_proxy_stats(body: object) -> ProxyStats | None:
    metrics = body.get("metrics") if isinstance(body, dict) else None
    if not isinstance(metrics, dict):
        return None
    samples = metrics.get("ruststash_requests_total")
    if not isinstance(samples, dict):
        samples = {}
    by_outcome: dict[str, int] = {}
    for label, value in samples.items():
        if isinstance(label, str) and isinstance(value, int | float):
            outcome = label.rsplit("/", 1)[-1]
            by_outcome[outcome] = by_outcome.get(outcome, 0) + int(value)
    hits = sum(by_outcome.get(o, 0) for o in FROM_CACHE)
    total = sum(v for o, v in by_outcome.items() if o != "pass")
    return ProxyStats(by_outcome, hits, total)


def render_proxy_stats(stats: ProxyStats | None, admin_url: str) -> str:
    if stats is None:
        return f"no proxy running (nothing answered at {admin_url})"
    if stats.hit_ratio is None:
        return f"proxy at {admin_url}: no requests since start"
    counts = ", ".join(f"{o} {n}" for o, n in sorted(stats.requests.items(), key=lambda kv: -kv[1]) if n)
    return f"proxy at {admin_url}: {stats.total} requests since start, hit ratio {stats.hit_ratio:.1%} ({counts})"


# ------------------------------------------------------------------------------------------- ls


def render_entry(entry: Entry, accessed_at: float, now: float) -> str:
    stored = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.stored_at))
    return f"{human_size(entry.size):>10}  {stored}  used {human_age(now - accessed_at):>4} ago  {entry.key}"


def sorted_entries(entries: Iterable[tuple[Entry, float]]) -> list[tuple[Entry, float]]:
    return sorted(entries, key=lambda pair: pair[0].key)


# ------------------------------------------------------------------------------------------- purge


@dataclass(frozen=True)
class PurgeReport:
    entries: int
    bodies: int
    freed: int


def purge_plan(store: Store, chosen: Filter, now: float | None = None) -> tuple[list[Entry], PurgeReport]:
    """The entries `chosen` selects, and what removing them would free (bodies nothing else points at)."""
    moment = time.time() if now is None else now
    doomed: list[Entry] = []
    kept_digests: set[str] = set()
    for entry, accessed_at in store.entries():
        if chosen.matches(entry, accessed_at, moment):
            doomed.append(entry)
        else:
            kept_digests.add(entry.digest)
    freed_digests = {e.digest: e.size for e in doomed if e.digest not in kept_digests}
    return sorted(doomed, key=lambda e: e.key), PurgeReport(
        len(doomed), len(freed_digests), sum(freed_digests.values())
    )


def purge(store: Store, keys: Sequence[str]) -> PurgeReport:
    removed, bodies, freed = store.remove_entries(list(keys))
    return PurgeReport(removed, bodies, freed)
