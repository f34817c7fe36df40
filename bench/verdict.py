"""Targets as ratios over interleaved rounds, and whether the machine was quiet enough to
trust them.

Every figure with a target is a ratio against a baseline measured in the same round (so a
slow round slows both sides), reported as the median of the rounds with its spread
(min-max), and a verdict: "met" or "NOT met". A ratio is never averaged across rounds of
different baselines.

Calibration: a short direct-path round trip taken when the run starts. A round whose own
direct-path RTT is far from it ran on a disturbed machine (another tenant, a throttled CPU),
and the report says so next to the numbers instead of presenting them as clean.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# A round's direct RTT more than this far from the calibration (either way) is disturbed.
DISTURBED_FACTOR = 1.5


@dataclass(frozen=True)
class Target:
    """`ratios`: one per round; `at_least`: the target is ratio >= bound (else <=)."""

    name: str
    ratios: Sequence[float]
    bound: float
    at_least: bool = True

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def met(self) -> bool:
        return self.median >= self.bound if self.at_least else self.median <= self.bound

    def row(self) -> list[str]:
        lo, hi = min(self.ratios), max(self.ratios)
        return [self.name, f"{'≥' if self.at_least else '≤'} {self.bound:g}",
                f"{self.median:.2f}", f"{lo:.2f}-{hi:.2f}", str(len(self.ratios)),
                "met" if self.met else "NOT met"]


HEADERS = ["target", "bound", "median ratio", "spread (min-max)", "rounds", "verdict"]


def spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """"median (min-max)" of per-round values."""
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}-{fmt.format(max(values))})")


def disturbed(calibration_us: float, direct_us: Sequence[float]) -> list[int]:
    """Indexes of the rounds whose direct-path RTT p50 is more than DISTURBED_FACTOR away
    from the calibration taken at the start of the run."""
    return [i for i, d in enumerate(direct_us)
            if d > calibration_us * DISTURBED_FACTOR or d < calibration_us / DISTURBED_FACTOR]


def machine_note(calibration_us: float, direct_us: Sequence[float]) -> str:
    """One sentence for the report: the calibration, each round's direct RTT, and a flag
    when the machine was busy during the run."""
    bad = disturbed(calibration_us, direct_us)
    load = os.getloadavg()[0]
    rounds = ", ".join(f"{d:.0f}" for d in direct_us)
    text = (f"Calibration: direct RTT p50 {calibration_us:.0f} µs at the start of the run; "
            f"the rounds' direct RTT p50: {rounds} µs; load average {load:.2f} on "
            f"{os.cpu_count()} cores at the end.")
    if bad:
        text += (f" **Busy machine: round(s) {', '.join(str(i + 1) for i in bad)} ran more "
                 f"than {DISTURBED_FACTOR}x away from the calibration; read the ratios with "
                 "their spread.**")
    return text
