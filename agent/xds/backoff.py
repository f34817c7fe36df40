"""Exponential backoff with jitter, shared by the discovery stream and certificate renewal."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays `initial * 2^n`, capped at `maximum`, with "equal jitter": half fixed, half random.

    Half fixed so a reconnect storm still spreads out but a single agent never retries
    sooner than half the nominal delay (pure full jitter can retry at ~0 s repeatedly).
    """

    initial: float = 0.01
    maximum: float = 15.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = 0

    def nominal(self) -> float:
        # min() before the power would overflow for large attempt counts.
        return min(self.maximum, self.initial * 2.0 ** min(self.attempts, 60))

    def next(self) -> float:
        d = self.nominal()
        self.attempts += 1
        return d / 2 + self.rng.uniform(0, d / 2)

    def reset(self) -> None:
        self.attempts = 0
