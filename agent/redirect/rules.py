"""The live view of our rules, shared by every backend: read, diff and show work on it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChainKey:
    family: str  # "ipv4" / "ipv6" for iptables, "inet" for nftables
    table: str
    chain: str

    def __str__(self) -> str:
        return f"{self.family} {self.table} {self.chain}"


@dataclass(frozen=True)
class LiveRule:
    text: str
    packets: int = 0
    bytes: int = 0


@dataclass
class OwnRules:
    """Our chains (and our jumps inside built-in/base chains), in kernel order."""

    chains: dict[ChainKey, list[LiveRule]] = field(default_factory=dict)

    def add(self, key: ChainKey, rule: LiveRule | None = None) -> None:
        lst = self.chains.setdefault(key, [])
        if rule is not None:
            lst.append(rule)

    def texts(self, key: ChainKey) -> list[str]:
        return [r.text for r in self.chains.get(key, [])]

    def __bool__(self) -> bool:
        return bool(self.chains)


@dataclass
class Drift:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return not self.missing and not self.unexpected


def compare(expected: OwnRules, live: OwnRules) -> Drift:
    """What of `expected` is absent from `live`, and what of ours in `live` is not expected."""
    drift = Drift()
    for key in expected.chains.keys() | live.chains.keys():
        exp, got = expected.texts(key), live.texts(key)
        if key not in live.chains:
            drift.missing.append(f"chain {key}")
        elif key not in expected.chains:
            drift.unexpected.append(f"chain {key}")
        if exp == got:
            continue
        remaining = list(got)
        for r in exp:
            if r in remaining:
                remaining.remove(r)
            else:
                drift.missing.append(f"{key}: {r}")
        drift.unexpected += [f"{key}: {r}" for r in remaining]
        if sorted(exp) == sorted(got):  # same rules, wrong order: first match wins, so it matters
            drift.unexpected.append(f"{key}: rules out of order")
    drift.missing.sort()
    drift.unexpected.sort()
    return drift
