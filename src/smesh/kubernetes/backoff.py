"""Capped exponential backoff with jitter, for reconnecting to the API server (sans-IO).

Jitter spreads the reconnects of every node agent after an API server restart, so thousands
of watches do not come back in the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``initial * factor**n`` capped at *cap*, each scaled by a random factor in
    ``[1 - jitter, 1]``; :meth:`reset` after a success starts over."""

    initial: float = 0.2
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ValueError(f"backoff: need 0 < initial ({self.initial}) <= cap ({self.cap})")
        if self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("backoff: need factor >= 1 and 0 <= jitter < 1")

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds; counts one more failure."""
        base = min(self.cap, self.initial * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return base * (1 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempts = 0
