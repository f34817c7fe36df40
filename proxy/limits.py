"""Concurrency limits of the shared node proxy, per pod and for the whole process.

Every pod on the node shares one proxy process and its file descriptors. Without limits
one pod (a bug or an attacker) can hold all of them, and every other pod loses its traffic
(issue 12). As Envoy's max-connections and overload manager do, the proxy counts what each
pod holds and refuses new work beyond the pod's share or beyond the global cap; refusing
at once (a reset) is cheaper and more predictable than queueing.

Two kinds of slots: connections (accepted client connections on 15001/15006/15008, held
until the handler ends) and pending connects (upstream dials not yet answered, which can
last up to the connect timeout: the cheapest way to pile up sockets).
"""

from __future__ import annotations

import errno
import resource
from collections.abc import Hashable
from dataclasses import dataclass

from proxy.config import ProxyConfig, check_limits
from proxy.ratelimit import TokenBuckets

# A relayed plain connection holds up to 6 fds (client, upstream, and a splice pipe pair
# per direction); the rest of the process (pods' listeners, netns fds, mesh channel) needs
# headroom too.
FDS_PER_CONNECTION = 6
FD_RESERVE = 256


class Limiter:
    """Slots per key and in total. Not thread-safe: the proxy's event loop is its only user."""

    def __init__(self, per_key: int, total: int) -> None:
        if per_key < 1 or total < 1:
            raise ValueError("limits must be >= 1")
        self.per_key, self.total = per_key, total
        self.used = 0
        self._by_key: dict[Hashable, int] = {}

    def acquire(self, key: Hashable) -> str | None:
        """Take a slot for `key`: None when granted, else why not ("pod_limit": the key has
        its share, "global_limit": the process has). A granted slot must be released."""
        held = self._by_key.get(key, 0)
        if held >= self.per_key:
            return "pod_limit"
        if self.used >= self.total:
            return "global_limit"
        self._by_key[key] = held + 1
        self.used += 1
        return None

    def release(self, key: Hashable) -> None:
        held = self._by_key.get(key, 0)
        if held <= 0:
            return  # never more releases than grants: the counts must not drift negative
        if held == 1:
            del self._by_key[key]
        else:
            self._by_key[key] = held - 1
        self.used -= 1

    def held(self, key: Hashable) -> int:
        return self._by_key.get(key, 0)


def auto_max_connections() -> int:
    """The global connection cap when the config leaves it at 0: what the process's fd
    limit (RLIMIT_NOFILE, soft) can carry, with a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(64, (soft - FD_RESERVE) // FDS_PER_CONNECTION)


@dataclass
class NodeLimits:
    """The proxy's shared limiters (one set per process, shared by all its pods), and the
    error-log budget, keyed by (pod uid, event)."""

    connections: Limiter
    pending_connects: Limiter
    error_log: TokenBuckets

    @classmethod
    def from_config(cls, cfg: ProxyConfig) -> NodeLimits:
        """Raises ConfigError naming the key when a limit is out of range."""
        check_limits(cfg)  # also done by load(); a config built in code is checked here
        return cls(Limiter(cfg.max_connections_per_pod,
                           cfg.max_connections or auto_max_connections()),
                   Limiter(cfg.max_pending_connects_per_pod, cfg.max_pending_connects),
                   TokenBuckets(cfg.error_log_per_second, cfg.error_log_burst))


class Refused(ConnectionRefusedError):
    """A dial the proxy refused itself (loop guard or limits), before any socket was made.
    A ConnectionRefusedError, so every caller that handles a refused connect handles it;
    `reason` is the label of `meshnode_proxy_connections_refused_total`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(errno.ECONNREFUSED, f"refused by the proxy: {detail or reason}")
        self.reason = reason
