"""Every count the proxy keeps, in one place, as Prometheus metrics on an injected registry (DESIGN.md §7).

Label values come from small fixed sets (kinds, outcomes, causes, configured upstream origins), never from
URLs or crate names; every known combination is touched at start so dashboards show zeros. Values derived
from disk (store size, entries, free space) and breaker states are computed at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .policy import Kind

OUTCOMES = ("hit", "miss", "revalidated", "stale", "pass", "error")
KINDS = tuple(kind.value for kind in Kind)
SOURCES = ("cache", "upstream")
UPSTREAM_CAUSES = (
    "connect",
    "dns",
    "tls",
    "timeout",
    "reset",
    "truncated",
    "status_5xx",
    "circuit_open",
    "invalid",
    "other",
)
BREAKER_STATES = ("closed", "open", "half_open")
# Upstream latency reaches past a minute: a satellite link or a trickling mirror.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FROM_CACHE = ("HIT", "STALE", "REVALIDATED")


@dataclass(frozen=True)
class StoreFigures:
    bytes: int
    entries: int
    max_bytes: int
    free_bytes: int
    evictions: int
    disk_full: bool = False
    memory_bytes: int = 0
    memory_hits: int = 0


class Metrics:
    def __init__(self, registry: CollectorRegistry, upstreams: Iterable[str] = ()) -> None:
        self.registry = registry
        self.requests = Counter(
            "ruststash_requests", "Client requests by URL kind and outcome", ("kind", "outcome"), registry=registry
        )
        self.served_bytes = Counter(
            "ruststash_served_bytes", "Body bytes sent to clients, by where they came from", ("source",),
            registry=registry,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "ruststash_upstream_errors", "Failed upstream fetches by cause", ("cause",), registry=registry
        )
        self.upstream_latency = Histogram(
            "ruststash_upstream_fetch_seconds",
            "Time from sending a request upstream to having its response headers",
            ("upstream",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.integrity_failures = Counter(
            "ruststash_integrity_failures", "Bodies refused because their digest was not the published one",
            ("kind",), registry=registry,
        )  # fmt: skip
        self.coalesced = Counter(
            "ruststash_coalesced_requests", "Requests that joined a fetch already under way", ("kind",),
            registry=registry,
        )  # fmt: skip
        self.background_refreshes = Counter(
            "ruststash_background_refreshes", "Fetches left to finish in the background after a stale answer",
            ("kind",), registry=registry,
        )  # fmt: skip
        # Each request counts on two of these: looked up once here, not through `labels` per request.
        self._requests_by: dict[tuple[str, str], Counter] = {}
        for kind in KINDS:
            for outcome in OUTCOMES:
                self._requests_by[kind, outcome.upper()] = self.requests.labels(kind, outcome)
            for counter in (self.integrity_failures, self.coalesced, self.background_refreshes):
                counter.labels(kind)
        self._served_from = {source: self.served_bytes.labels(source) for source in SOURCES}
        for cause in UPSTREAM_CAUSES:
            self.upstream_errors.labels(cause)
        for upstream in upstreams:
            self.upstream_latency.labels(upstream)

    def request(self, kind: str, outcome: str, size: int) -> None:
        counter = self._requests_by.get((kind, outcome))
        (counter if counter is not None else self.requests.labels(kind, outcome.lower())).inc()
        if outcome in FROM_CACHE:
            self._served_from["cache"].inc(size)
        elif outcome in ("MISS", "PASS"):
            self._served_from["upstream"].inc(size)

    def upstream_error(self, cause: str) -> None:
        self.upstream_errors.labels(cause if cause in UPSTREAM_CAUSES else "other").inc()

    def integrity_failure(self, kind: str) -> None:
        self.integrity_failures.labels(kind).inc()

    def coalesced_request(self, kind: str) -> None:
        self.coalesced.labels(kind).inc()

    def background_refresh(self, kind: str) -> None:
        self.background_refreshes.labels(kind).inc()

    def observe_upstream(self, upstream: str, seconds: float) -> None:
        self.upstream_latency.labels(upstream).observe(seconds)

    def add_scrape_time(self, store: Callable[[], StoreFigures], breakers: Callable[[], dict[str, str]]) -> None:
        self.registry.register(_ScrapeTimeCollector(store, breakers))

    def snapshot(self) -> dict[str, object]:
        """A JSON-able summary of the counters (for /api/stats)."""
        out: dict[str, dict[str, float]] = {}
        for family in self.registry.collect():
            if family.type not in ("counter", "gauge"):
                continue
            for sample in family.samples:
                if sample.name.endswith("_created") or not sample.value:
                    continue
                label = "/".join(sample.labels.values()) or "value"
                out.setdefault(sample.name, {})[label] = sample.value
        return {"version": __version__, "metrics": out}


class _ScrapeTimeCollector(Collector):
    def __init__(self, store: Callable[[], StoreFigures], breakers: Callable[[], dict[str, str]]) -> None:
        self._store = store
        self._breakers = breakers

    def collect(self) -> Iterator[Metric]:
        figures = self._store()
        for name, text, value in (
            ("ruststash_store_bytes", "Bytes of stored bodies", figures.bytes),
            ("ruststash_store_entries", "Stored responses", figures.entries),
            ("ruststash_store_max_bytes", "The store's size cap (0: none)", figures.max_bytes),
            ("ruststash_store_free_bytes", "Free space on the cache directory's filesystem", figures.free_bytes),
            ("ruststash_store_disk_full", "1 while the cache disk is full and nothing is stored", figures.disk_full),
            ("ruststash_memory_cache_bytes", "Bytes of small bodies held in memory (--memory-cache)",
             figures.memory_bytes),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, text, value=value)
        yield CounterMetricFamily(
            "ruststash_store_evictions", "Entries evicted to keep the store under its cap", value=figures.evictions
        )
        yield CounterMetricFamily(
            "ruststash_memory_cache_hits", "Stored bodies answered from memory, without reading the disk",
            value=figures.memory_hits,
        )  # fmt: skip
        states = GaugeMetricFamily(
            "ruststash_upstream_circuit_state", "1 for each upstream origin's current breaker state",
            labels=("upstream", "state"),
        )  # fmt: skip
        up = GaugeMetricFamily(
            "ruststash_upstream_up",
            "1 if requests may go to the upstream origin (breaker not open)",
            labels=("upstream",),
        )
        for upstream, state in sorted(self._breakers().items()):
            for candidate in BREAKER_STATES:
                states.add_metric([upstream, candidate], 1.0 if candidate == state else 0.0)
            up.add_metric([upstream], 0.0 if state == "open" else 1.0)
        yield states
        yield up
        info = GaugeMetricFamily("ruststash_build_info", "ruststash's version", labels=("version",))
        info.add_metric([__version__], 1.0)
        yield info
