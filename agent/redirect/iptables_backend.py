"""Apply, read, diff and remove our rules with iptables-restore / iptables-save.

Only our own chains and the jumps into them are ever written: restores run with --noflush,
and every removal is an explicit `-D`/`-F`/`-X` of something we read back as ours.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field

from agent.redirect import iptables_rules
from agent.redirect.errors import RedirectError
from agent.redirect.iptables_rules import BUILTIN_CHAINS, Payload
from agent.redirect.profile import names_for
from agent.redirect.rules import ChainKey, LiveRule, OwnRules
from agent.redirect.run import run
from agent.redirect.spec import RedirectSpec
from core import netns

LOCK_DIR = "/run/meshnode/xtables"
_COUNTED = re.compile(r"^\[(\d+):(\d+)\] (-A (\S+) (.*))$")
_TARGET = re.compile(r"(?:^| )-[jg] (\S+)")


@dataclass
class SavedTable:
    chains: list[str] = field(default_factory=list)
    rules: list[tuple[str, str, int, int]] = field(default_factory=list)  # chain, args, p, b


def parse_save(text: str) -> dict[str, SavedTable]:
    tables: dict[str, SavedTable] = {}
    cur: SavedTable | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), SavedTable())
        elif cur is None or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            cur.chains.append(line[1:].split()[0])
        elif m := _COUNTED.match(line):
            cur.rules.append((m[4], m[5], int(m[1]), int(m[2])))
        elif line.startswith("-A "):
            chain, _, args = line[3:].partition(" ")
            cur.rules.append((chain, args, 0, 0))
    return tables


def own_rules(tables: dict[str, SavedTable], ours: frozenset[str], family: int) -> OwnRules:
    fam = f"ipv{family}"
    out = OwnRules()
    for tname, t in tables.items():
        for c in t.chains:
            if c in ours:
                out.add(ChainKey(fam, tname, c))
        for chain, args, p, b in t.rules:
            tgt = _TARGET.search(args)
            if chain in ours or (chain in BUILTIN_CHAINS and tgt and tgt[1] in ours):
                out.add(ChainKey(fam, tname, chain), LiveRule(args, p, b))
    return out


def _removal_lines(own: OwnRules, table: str) -> list[str]:
    """Lines that delete every jump into our chains, then flush and delete the chains."""
    jumps, chains = [], []
    for key, rules in own.chains.items():
        if key.table != table:
            continue
        if key.chain in BUILTIN_CHAINS:
            jumps += [f"-D {key.chain} {r.text}" for r in rules]
        else:
            chains.append(key.chain)
    return jumps + [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]


class IptablesBackend:
    def __init__(self, flavour: str) -> None:
        if flavour not in ("nft", "legacy"):
            raise ValueError(f"iptables flavour must be nft or legacy, not {flavour!r}")
        self.flavour = flavour
        self.name = f"iptables-{flavour}"

    def prepare(self) -> None:
        """Nothing to load: the tools run per call (flavour detection ran at construction)."""

    def close(self) -> None:
        """Nothing held between calls."""

    def _tool(self, family: int, verb: str) -> str:
        return f"{'ip' if family == 4 else 'ip6'}tables-{self.flavour}-{verb}"

    def _env(self, label: str) -> dict[str, str]:
        # xtables' lock is one global file by default, yet it only guards one netns'
        # tables: a per-netns lock stops pods from queueing behind each other (and behind
        # the host's own iptables users) on a busy node.
        env = dict(os.environ)
        if self.flavour == "legacy" and label != "host":
            os.makedirs(LOCK_DIR, exist_ok=True)
            env["XTABLES_LOCKFILE"] = f"{LOCK_DIR}/{netns.netns_inode('/proc/thread-self/ns/net')}"
        return env

    def _save(self, label: str, family: int) -> dict[str, SavedTable]:
        return parse_save(run(label, f"{self._tool(family, 'save')} (read rules)",
                              [self._tool(family, "save"), "-c"], env=self._env(label)))

    def _restore(self, label: str, family: int, payload: str, step: str) -> None:
        run(label, step, [self._tool(family, "restore"), "--noflush", "-w", "5"],
            stdin=payload, env=self._env(label))

    def _ours(self, spec: RedirectSpec, host: bool = False) -> frozenset[str]:
        n = names_for(spec.profile)
        return frozenset({n.postrouting} if host else n.iptables_chains)

    # -- the interface every backend offers (called with the thread already in the netns)

    def apply(self, label: str, spec: RedirectSpec) -> None:
        done: list[tuple[int, OwnRules]] = []
        try:
            for fam in spec.families:
                before = own_rules(self._save(label, fam), self._ours(spec), fam)
                payload = self._apply_payload(iptables_rules.render_pod(spec, fam), before)
                self._restore(label, fam, payload, f"{self._tool(fam, 'restore')} (apply)")
                done.append((fam, before))
        except RedirectError:
            for fam, before in reversed(done):  # leave each family as we found it
                self._rollback(label, spec, fam, before)
            raise

    def _apply_payload(self, want: Payload, before: OwnRules) -> str:
        out: list[str] = []
        tables = {t.name for t in want.tables} | {k.table for k in before.chains}
        for tname in sorted(tables):
            t = want.table(tname)
            out.append(f"*{tname}")
            if t is None:  # a table we no longer need (DNS capture turned off)
                out += _removal_lines(before, tname)
            else:
                stale = [k for k in before.chains if k.table == tname and
                         k.chain not in BUILTIN_CHAINS and k.chain not in t.chains]
                out += [f":{c} - [0:0]" for c in t.chains]
                out += [r.line() for r in t.rules if not r.is_jump_from_builtin]
                want_jumps = {(r.chain, r.args) for r in t.rules if r.is_jump_from_builtin}
                have: set[tuple[str, str]] = set()
                for key, rules in before.chains.items():
                    if key.table != tname or key.chain not in BUILTIN_CHAINS:
                        continue
                    for live in rules:
                        jump = (key.chain, live.text)
                        if jump in want_jumps and jump not in have:
                            have.add(jump)
                        else:  # duplicate or foreign-shaped jump into our chain
                            out.append(f"-D {key.chain} {live.text}")
                out += [r.line() for r in t.rules
                        if r.is_jump_from_builtin and (r.chain, r.args) not in have]
                out += [f"-F {k.chain}" for k in stale] + [f"-X {k.chain}" for k in stale]
            out.append("COMMIT")
        return "\n".join(out) + "\n"

    def _rollback(self, label: str, spec: RedirectSpec, fam: int, before: OwnRules) -> None:
        now = own_rules(self._save(label, fam), self._ours(spec), fam)
        out: list[str] = []
        for tname in sorted({k.table for k in now.chains} | {k.table for k in before.chains}):
            out.append(f"*{tname}")
            out += _removal_lines(now, tname)
            keys = [k for k in before.chains if k.table == tname]
            out += [f":{k.chain} - [0:0]" for k in keys if k.chain not in BUILTIN_CHAINS]
            out += [f"-A {k.chain} {r.text}" for k in keys for r in before.chains[k]]
            out.append("COMMIT")
        self._restore(label, fam, "\n".join(out) + "\n", f"{self._tool(fam, 'restore')} (rollback)")

    def remove(self, label: str, spec: RedirectSpec) -> list[str]:
        removed: list[str] = []
        for fam in (4, 6):
            own = own_rules(self._save(label, fam), self._ours(spec), fam)
            if not own:
                continue
            tables = sorted({k.table for k in own.chains})
            payload = "".join(f"*{t}\n" + "\n".join(_removal_lines(own, t)) + "\nCOMMIT\n"
                              for t in tables)
            self._restore(label, fam, payload, f"{self._tool(fam, 'restore')} (remove)")
            removed += [f"chain {k}" for k in own.chains if k.chain not in BUILTIN_CHAINS]
        if self.flavour == "legacy" and label != "host":
            lock = f"{LOCK_DIR}/{netns.netns_inode('/proc/thread-self/ns/net')}"
            if os.path.exists(lock):
                os.unlink(lock)
        return removed

    def read(self, label: str, spec: RedirectSpec) -> OwnRules:
        out = OwnRules()
        for fam in spec.families:
            out.chains.update(own_rules(self._save(label, fam), self._ours(spec), fam).chains)
        return out

    def expected(self, spec: RedirectSpec) -> OwnRules:
        out = OwnRules()
        for fam in spec.families:
            out.chains.update(self._canonical(iptables_rules.render_pod(spec, fam).text(), fam,
                                              self._ours(spec)).chains)
        return out

    @functools.lru_cache(maxsize=64)  # noqa: B019 - backends are few and long-lived
    def _canonical(self, payload: str, family: int, ours: frozenset[str]) -> OwnRules:
        """Our rules as the kernel prints them back: iptables-save rewrites what it is given
        (adds `-m tcp`, reorders matches), so diff compares against the kernel's own form."""
        with netns.scratch():
            label = "scratch"
            self._restore(label, family, payload, "canonicalise rules")
            return own_rules(self._save(label, family), ours, family)


@functools.cache
def detect_flavour() -> str:
    """legacy only if the host's legacy tables already hold rules; nft otherwise.

    Call in the host netns: a pod's fresh netns says nothing about what the node uses.
    """
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        try:
            text = run("host", "detect iptables flavour", [tool])
        except RedirectError:
            continue
        if any(line.startswith("-A ") for line in text.splitlines()):
            return "legacy"
    return "nft"
