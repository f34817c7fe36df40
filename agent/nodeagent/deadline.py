"""The plugin's ADD deadline, as the agent's own monotonic clock sees it.

The plugin sends `deadline_ms`, the time it has left for this ADD, rather than an absolute
time: the plugin and the agent share no clock we could trust (wall clocks step, and a
container may see another time namespace), but a relative budget only needs each side's own
monotonic clock. The agent starts counting when its handler starts, which is after the
request sat in the socket backlog and before the reply travels back, so it keeps a margin:
an ADD the agent commits to must reach the plugin before the plugin gives up on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Old plugins send no deadline_ms: they wait timeout_seconds, 10 s unless configured.
DEFAULT_BUDGET_MS = 10_000
MAX_BUDGET_MS = 600_000  # the plugin's own cap on timeout_seconds
# The margin: 10% of the budget, at most 250 ms (the reply and the backlog wait are fast,
# but a loaded node delays both).
MARGIN_SHARE = 0.1
MAX_MARGIN = 0.25


class BudgetError(ValueError):
    """`deadline_ms` is present but not a budget."""


@dataclass(frozen=True)
class Deadline:
    at: float  # clock() by which the agent must have committed (margin included)
    budget_ms: float  # what the plugin sent, for messages
    # time.monotonic; a test's fake clock makes deadline logic testable without sleeping
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    @classmethod
    def after(cls, budget_ms: float, start: float | None = None,
              clock: Callable[[], float] = time.monotonic) -> Deadline:
        start = clock() if start is None else start
        seconds = max(budget_ms, 0) / 1000
        return cls(at=start + seconds - min(MAX_MARGIN, seconds * MARGIN_SHARE),
                   budget_ms=budget_ms, clock=clock)

    def remaining(self) -> float:
        return self.at - self.clock()

    def passed(self) -> bool:
        return self.remaining() <= 0


def budget_of(value: object) -> float:
    """A request's `deadline_ms` as the plugin sent it, checked; the default for a plugin
    that sends none (None)."""
    if value is None:
        return DEFAULT_BUDGET_MS
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or value > MAX_BUDGET_MS:
        raise BudgetError(f"deadline_ms must be a number of milliseconds up to {MAX_BUDGET_MS}")
    return float(value)
