"""Apply, read, diff and remove our rules with native nftables (`inet` tables we own).

Every write is one nftables transaction: the kernel applies all of it or none of it. We
call libnftables in-process (Debian's python3-nftables) rather than exec'ing `nft`: the
transaction takes ~1.5 ms, the `nft` process start-up ~20 ms. The context is created on
the calling thread, so its netlink socket belongs to the netns that thread is in.
"""

from __future__ import annotations

import functools
import os
import queue
import re
import threading

from agent.redirect import nftables_rules
from agent.redirect.errors import RedirectError
from agent.redirect.profile import names_for
from agent.redirect.rules import ChainKey, LiveRule, OwnRules
from agent.redirect.run import run
from agent.redirect.spec import RedirectSpec
from core import netns

_COUNTER = re.compile(r"counter packets (\d+) bytes (\d+)")

try:
    import nftables as _libnft
except ImportError:  # pragma: no cover - setup installs python3-nftables
    _libnft = None

# Freeing a libnftables context takes 10-25 ms after a change (closing its netlink socket
# waits for the kernel), ten times what the transaction itself costs. Nothing on the pod
# start-up path needs to wait for it, so spent contexts are freed on a background thread.
# But libnftables keeps some state process-wide (its interface cache is released by every
# context free), so no two calls into it may overlap: every create, command and free holds
# _LIBNFT. A free then delays the next transaction, never a caller that is done.
_LIBNFT = threading.Lock()
_spent: queue.SimpleQueue[list[object]] = queue.SimpleQueue()


def _reap() -> None:
    while True:
        holder = _spent.get()
        with _LIBNFT:
            holder.clear()  # the last reference: the context is freed here, under the lock


threading.Thread(target=_reap, name="nft-ctx-reaper", daemon=True).start()


# libnftables waits on its netlink socket with select(): a socket numbered FD_SETSIZE (1024)
# or above aborts the whole process (glibc's fd_set check). A process with that many files
# open gets the nft executable instead: slower, never fatal.
_FD_SETSIZE = 1024
_FD_MARGIN = 16  # libnftables opens a few descriptors of its own per call


def _low_fds_left() -> bool:
    probe = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # the lowest free number
    os.close(probe)
    return probe < _FD_SETSIZE - _FD_MARGIN


def nft(label: str, step: str, script: str) -> str:
    """Run an nft script in the current thread's netns; return what it printed."""
    if _libnft is None or not _low_fds_left():
        return run(label, step, ["nft", "-f", "-"], stdin=script)
    with _LIBNFT:
        holder: list[object] = [_libnft.Nftables()]
        rc, out, err = holder[0].cmd(script)  # type: ignore[attr-defined]
    _spent.put(holder)  # holder is the only reference: the reaper frees the context
    if rc != 0:
        raise RedirectError(label, step, f"nftables: {err.strip() or f'error {rc}'}")
    return str(out)


def parse_ruleset(text: str, ours: frozenset[str]) -> OwnRules:
    """Our tables from `nft list ruleset`; base chains keep their hook line as first item."""
    out = OwnRules()
    table: str | None = None
    chain: str | None = None
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if depth == 0 and (m := re.match(r"^table inet (\S+) \{$", line)):
            table, depth = m[1], 1
            continue
        if line.endswith("{"):
            depth += 1
            if depth == 2 and (m := re.match(r"^chain (\S+) \{$", line)):
                chain = m[1]
                if table in ours:
                    out.add(ChainKey("inet", table, chain))
            continue
        if line == "}":
            depth -= 1
            if depth <= 1:
                chain = None
            if depth == 0:
                table = None
            continue
        if table in ours and chain is not None and depth == 2:
            m = _COUNTER.search(line)
            p, b = (int(m[1]), int(m[2])) if m else (0, 0)
            out.add(ChainKey("inet", table, chain), LiveRule(_COUNTER.sub("counter", line), p, b))
    return out


class NftablesBackend:
    name = "nftables"

    def prepare(self) -> None:
        """Nothing to load: each call makes its own libnftables context."""

    def close(self) -> None:
        """Nothing held between calls."""

    def _ours(self, spec: RedirectSpec) -> frozenset[str]:
        return frozenset(names_for(spec.profile).nft_tables)

    def _drop(self, tables: frozenset[str] | set[str]) -> str:
        # add-then-delete removes a table whether or not it exists, inside the transaction.
        return "".join(f"add table inet {t}\ndelete table inet {t}\n" for t in sorted(tables))

    def script(self, spec: RedirectSpec) -> str:
        rendered = nftables_rules.render_pod(spec)
        unused = self._ours(spec) - {t.name for t in rendered.tables}
        return self._drop(unused) + rendered.text()

    def apply(self, label: str, spec: RedirectSpec) -> None:
        nft(label, "nft (apply)", self.script(spec))

    def read(self, label: str, spec: RedirectSpec) -> OwnRules:
        return parse_ruleset(nft(label, "nft list ruleset", "list ruleset"), self._ours(spec))

    def remove(self, label: str, spec: RedirectSpec) -> list[str]:
        listed = nft(label, "nft list tables", "list tables inet")
        present = {ln.split()[-1] for ln in listed.splitlines()} & self._ours(spec)
        if present:
            nft(label, "nft (remove)", self._drop(present))
        return [f"table inet {t}" for t in sorted(present)]

    def expected(self, spec: RedirectSpec) -> OwnRules:
        return self._canonical(self.script(spec), self._ours(spec))

    @functools.lru_cache(maxsize=64)  # noqa: B019 - backends are few and long-lived
    def _canonical(self, script: str, ours: frozenset[str]) -> OwnRules:
        """Our rules as nft lists them back (it rewrites `mark and` to `meta mark &`, etc.)."""
        with netns.scratch():
            nft("scratch", "canonicalise rules", script)
            return parse_ruleset(nft("scratch", "nft list ruleset", "list ruleset"), ours)
