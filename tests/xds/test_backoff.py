"""Backoff: doubling, capped, jittered within [d/2, d], reset to the start."""

from __future__ import annotations

import random

from agent.xds.backoff import Backoff


def test_doubles_with_equal_jitter_and_caps() -> None:
    b = Backoff(0.01, 1.0, rng=random.Random(7))
    for n in range(12):
        d = min(1.0, 0.01 * 2 ** n)
        got = b.next()
        assert d / 2 <= got <= d, (n, got)
    assert b.nominal() == 1.0


def test_jitter_spreads_clients() -> None:
    delays = {round(Backoff(1.0, 10.0, rng=random.Random(s)).next(), 6) for s in range(20)}
    assert len(delays) > 15


def test_reset_and_huge_attempt_counts() -> None:
    b = Backoff(0.5, 150.0)
    b.attempts = 10_000           # no overflow
    assert b.next() <= 150.0
    b.reset()
    assert b.next() <= 0.5
