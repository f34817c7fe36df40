"""Picking one endpoint among candidates (already usable, non-ejected and locality-preferred)
by the simple policies. Consistent hash is proxy/traffic/ringhash.py."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from core.mesh.model import Workload

# Envoy's LeastRequestLbConfig.choice_count default.
CHOICES = 2


def round_robin(candidates: Sequence[Workload], turn: int) -> Workload:
    """The caller owns the counter (per cluster), as MeshTable does per service."""
    return candidates[turn % len(candidates)]


def random_pick(candidates: Sequence[Workload], rng: random.Random) -> Workload:
    return candidates[rng.randrange(len(candidates))]


def least_request(candidates: Sequence[Workload], active: Callable[[str], int],
                  rng: random.Random, choices: int = CHOICES) -> Workload:
    """Envoy's unweighted LEAST_REQUEST: sample `choices` candidates at random (with
    replacement) and keep the one with the fewest active connections, the first sampled on
    a tie. With all counts equal this is a uniform random pick."""
    best = candidates[rng.randrange(len(candidates))]
    for _ in range(choices - 1):
        other = candidates[rng.randrange(len(candidates))]
        if active(other.uid) < active(best.uid):
            best = other
    return best
