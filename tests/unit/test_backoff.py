"""core/backoff.py: doubling, capped, jittered within [d/2, d], reset to the start. No sleeping:
the delays are only computed (a seeded rng where the draw matters)."""

from __future__ import annotations

import random

import pytest

from core.backoff import Backoff


def test_doubles_with_equal_jitter_and_caps() -> None:
    b = Backoff(0.01, 1.0, rng=random.Random(7))
    for n in range(12):
        d = min(1.0, 0.01 * 2 ** n)
        got = b.next()
        assert d / 2 <= got <= d, (n, got)
    assert b.nominal() == 1.0


@pytest.mark.parametrize("initial, cap, nominals", [
    (0.2, 30.0, [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]),   # k8s watch
    (0.01, 15.0, [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12]),  # xDS, ZDS
    (1.0, 30.0, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),                  # CNI repair retry
    (0.05, 1.6, [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 1.6]),                    # pod sync retry
    (5.0, 5.0, [5.0, 5.0, 5.0]),
])
def test_nominal_sequence(initial: float, cap: float, nominals: list[float]) -> None:
    b = Backoff(initial, cap, rng=random.Random(1))
    for want in nominals:
        assert b.nominal() == pytest.approx(want)
        assert want / 2 <= b.next() <= want


def test_without_jitter_the_nominal_delays_exactly() -> None:
    b = Backoff(0.01, 0.05, jitter=False)
    assert [b.next() for _ in range(5)] == [0.01, 0.02, 0.04, 0.05, 0.05]
    b.reset()
    assert b.next() == 0.01


def test_jitter_spreads_clients() -> None:
    delays = {round(Backoff(1.0, 10.0, rng=random.Random(s)).next(), 6) for s in range(20)}
    assert len(delays) > 15


def test_reset_and_huge_attempt_counts() -> None:
    b = Backoff(0.5, 150.0)
    b.attempts = 10_000           # no overflow
    assert b.next() <= 150.0
    b.reset()
    assert b.attempts == 0
    assert b.next() <= 0.5
