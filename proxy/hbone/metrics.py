"""HBONE metrics, with Istio's label names for principals (full SPIFFE IDs), so a
dashboard can tell who talked to whom over mTLS and who was refused.

Kept apart from proxy/metrics.py: those count every TCP connection by workload; these count
tunnel streams and policy decisions by identity. Label values are bounded by the number of
identities (service accounts), not by connections.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

_PRINCIPALS = ["direction", "source_principal", "destination_principal"]

STREAMS_OPENED = Counter(
    "meshnode_hbone_streams_opened", "HBONE CONNECT streams by outcome (HTTP status)",
    [*_PRINCIPALS, "response_code"])
STREAMS_CLOSED = Counter(
    "meshnode_hbone_streams_closed", "Relayed HBONE streams ended (reset: 'true' or 'false')",
    [*_PRINCIPALS, "reset"])
SENT = Counter("meshnode_hbone_sent_bytes", "Bytes into the tunnel", _PRINCIPALS)
RECEIVED = Counter("meshnode_hbone_received_bytes", "Bytes out of the tunnel", _PRINCIPALS)
AUTHZ_DENIED = Counter(
    "meshnode_proxy_authz_denied", "Inbound connections refused by L4 authorization",
    ["source_principal", "destination_principal", "reason", "policy"])
TLS_CONNECTIONS = Gauge("meshnode_hbone_tls_connections", "Open HBONE mTLS connections",
                        ["direction"])
HANDSHAKE_FAILURES = Counter(
    "meshnode_hbone_handshake_failures", "mTLS connections refused before any stream",
    ["direction", "reason"])


class StreamSeries:
    """The per-stream series of one (direction, source, destination) principal pair, looked
    up once: prometheus_client's `labels()` validates and takes a lock on every call, four
    times per tunnel on each end. As many as the pairs of identities, like the series."""

    __slots__ = ("_labels", "closed", "opened", "received", "sent")

    def __init__(self, direction: str, src: str, dst: str) -> None:
        labels = (direction, src, dst)
        self.opened: dict[str, Counter] = {}
        self.closed = {reset: STREAMS_CLOSED.labels(*labels, reset) for reset in ("false",
                                                                                 "true")}
        self.sent = SENT.labels(*labels)
        self.received = RECEIVED.labels(*labels)
        self._labels = labels

    def open(self, code: str) -> None:
        c = self.opened.get(code)
        if c is None:
            c = self.opened[code] = STREAMS_OPENED.labels(*self._labels, code)
        c.inc()

    def close(self, reset: bool, sent: int, received: int) -> None:
        self.closed["true" if reset else "false"].inc()
        self.sent.inc(sent)
        self.received.inc(received)


_SERIES: dict[tuple[str, str, str], StreamSeries] = {}


def series(direction: str, src: str, dst: str) -> StreamSeries:
    key = (direction, src, dst)
    s = _SERIES.get(key)
    if s is None:
        s = _SERIES[key] = StreamSeries(direction, src, dst)
    return s
