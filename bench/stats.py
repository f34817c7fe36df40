"""Percentiles and the markdown tables every benchmark writes."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def pct(samples: Sequence[float], p: float) -> float:
    s = sorted(samples)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"
