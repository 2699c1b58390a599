"""A circuit breaker per upstream origin. Pure: time is passed in.

After `threshold` consecutive failures the origin is open (requests do not go there) for a backoff that
doubles with each failed probe up to a cap. When the backoff has passed, one request at a time may probe;
its success closes the breaker, its failure opens it again for longer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class Breaker:
    threshold: int = 3
    base_backoff: float = 5.0
    max_backoff: float = 300.0
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False
    backoff: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.backoff = self.backoff or self.base_backoff

    def state(self, now: float) -> State:
        if self.failures < self.threshold:
            return State.CLOSED
        return State.OPEN if now < self.open_until or self.probing else State.HALF_OPEN

    def allow(self, now: float) -> bool:
        """Whether a request may go to this origin now (taking the probe slot if it is half open)."""
        match self.state(now):
            case State.CLOSED:
                return True
            case State.OPEN:
                return False
            case State.HALF_OPEN:
                self.probing = True
                return True

    def retry_in(self, now: float) -> float:
        return max(0.0, self.open_until - now)

    def record_success(self) -> None:
        self.failures = 0
        self.probing = False
        self.open_until = 0.0
        self.backoff = self.base_backoff

    def record_failure(self, now: float) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.threshold:
            self.open_until = now + self.backoff
            self.backoff = min(self.backoff * 2, self.max_backoff)
