"""Exponential backoff with jitter and a cap, reset on success: every retry loop's delays."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays `initial * 2^n`, capped at `cap`, with "equal jitter": half fixed, half random.

    Half fixed so a reconnect storm (a fleet of agents after an API server restart) still
    spreads out but a single client never retries sooner than half the nominal delay (pure
    full jitter can retry at ~0 s repeatedly). `reset()` after a success.

    `jitter=False` for a node-local peer (the agent's ZDS socket, a local repair): one client
    per server, no storm to spread, and the exact doubling is what the logs show.
    """

    initial: float = 0.01
    cap: float = 15.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = 0
    jitter: bool = True

    def nominal(self) -> float:
        """The un-jittered delay `next()` draws from now."""
        # min() before the power would overflow for large attempt counts.
        return min(self.cap, self.initial * 2.0 ** min(self.attempts, 60))

    def next(self) -> float:
        """The delay to wait now, in [nominal/2, nominal] (nominal without jitter); the next
        one doubles."""
        d = self.nominal()
        self.attempts += 1
        return d / 2 + self.rng.uniform(0, d / 2) if self.jitter else d

    def reset(self) -> None:
        self.attempts = 0
