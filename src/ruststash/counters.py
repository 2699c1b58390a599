"""Every count the proxy keeps, in one place: what the metrics endpoint and /api/stats report.

Label values come from small fixed sets (kinds, outcomes, causes), never from URLs or crate names.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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


@dataclass
class Counters:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, outcome)
    bytes_served: Counter[str] = field(default_factory=Counter)  # source: cache | upstream
    upstream_errors: Counter[str] = field(default_factory=Counter)  # cause
    integrity_failures: Counter[str] = field(default_factory=Counter)  # kind
    coalesced: Counter[str] = field(default_factory=Counter)  # kind
    background_refreshes: Counter[str] = field(default_factory=Counter)  # kind

    def request(self, kind: str, outcome: str, size: int) -> None:
        self.requests[(kind, outcome)] += 1
        if outcome in ("HIT", "STALE", "REVALIDATED"):
            self.bytes_served["cache"] += size
        elif outcome in ("MISS", "PASS"):
            self.bytes_served["upstream"] += size

    def snapshot(self) -> dict[str, object]:
        by_outcome: Counter[str] = Counter()
        for (_, outcome), count in self.requests.items():
            by_outcome[outcome] += count
        return {
            "requests": {f"{kind}/{outcome}": n for (kind, outcome), n in sorted(self.requests.items())},
            "requests_by_outcome": dict(sorted(by_outcome.items())),
            "bytes_served": dict(self.bytes_served),
            "upstream_errors": dict(self.upstream_errors),
            "integrity_failures": dict(self.integrity_failures),
            "coalesced": dict(self.coalesced),
            "background_refreshes": dict(self.background_refreshes),
        }
