"""The proxy's Prometheus metrics.

The `istio_tcp_*` counters are Istio's standard TCP metrics with the label set and the values
ztunnel reports (istio/ztunnel src/proxy/metrics.rs: `CommonTrafficLabels`, `ConnectionOpen`;
src/proxy/{outbound,inbound,inbound_passthrough}.rs for who fills what), so Istio's Grafana
dashboards and Kiali's graph read them unchanged:

- `reporter`: `source` on the outbound hop (the client pod's side), `destination` on the
  inbound hop (15008 HBONE or 15006 plaintext);
- a side's workload labels come from its mesh workload (the control plane's workload API):
  `*_workload` is `workload_name` (the owner's name, e.g. the Deployment's, as istiod
  computes it), `*_canonical_service` and `*_app` are `canonical_name`,
  `*_canonical_revision` and `*_version` are `canonical_revision`, `*_cluster` is
  `cluster_id`, `*_region`/`*_zone` its locality; a value not known is `unknown`;
- `source_principal` is the SPIFFE ID the mTLS handshake proved (inbound HBONE) or the one we
  present (outbound HBONE); `unknown` on plaintext. `destination_principal` is the
  destination workload's identity whenever that workload is known;
- `destination_service*`: the service the client addressed (outbound to a VIP), or on the
  inbound side the one the client named (the `Forwarded: host=` of the CONNECT) else the
  destination workload's service whose target port was dialled;
- `request_protocol` is `tcp`; `connection_security_policy` `mutual_tls` over HBONE, else
  `unknown` (ztunnel's value for plaintext, on both sides);
- `response_flags`: `-`, except on `istio_tcp_connections_closed_total` for a connection that
  failed: `DENY` (policy), `CONNECT` (the upstream could not be reached), `TLS_FAILURE`,
  `NETWORK_POLICY` (the HBONE dial timed out), `IDENTITY_ERROR` (no certificate to present).

Without a mesh config channel (no control plane) the proxy knows only the pods' names and
namespaces from ZDS: those fill `*_workload` and `*_workload_namespace`, the rest is
`unknown`.

`istio_tcp_received_bytes_total` counts the client's bytes to the server (the request) and
`istio_tcp_sent_bytes_total` the server's bytes to the client (the response), on both
reporters, as Istio defines them; bytes are added while the connection lives (every few
seconds, and at its end), not only when it closes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.registry import Collector

from core.mesh.model import Service, Workload

UNKNOWN = "unknown"
REPORTER_SOURCE = "source"
REPORTER_DESTINATION = "destination"
MUTUAL_TLS = "mutual_tls"
# response_flags (ztunnel's ResponseFlags encoding)
NO_FLAGS = "-"
DENY = "DENY"
CONNECT = "CONNECT"
TLS_FAILURE = "TLS_FAILURE"
NETWORK_POLICY = "NETWORK_POLICY"
IDENTITY_ERROR = "IDENTITY_ERROR"

# ztunnel's CommonTrafficLabels, in its order (its locality labels, flattened, last).
_LABELS = ["reporter",
           "source_workload", "source_canonical_service", "source_canonical_revision",
           "source_workload_namespace", "source_principal", "source_app", "source_version",
           "source_cluster",
           "destination_service", "destination_service_namespace", "destination_service_name",
           "destination_workload", "destination_canonical_service",
           "destination_canonical_revision", "destination_workload_namespace",
           "destination_principal", "destination_app", "destination_version",
           "destination_cluster",
           "request_protocol", "response_flags", "connection_security_policy",
           "source_region", "source_zone", "destination_region", "destination_zone"]
LABELS = tuple(_LABELS)
_FLAGS = LABELS.index("response_flags")

OPENED = Counter("istio_tcp_connections_opened", "The total number of TCP connections opened",
                 _LABELS)
CLOSED = Counter("istio_tcp_connections_closed", "The total number of TCP connections closed",
                 _LABELS)
SENT = Counter("istio_tcp_sent_bytes",
               "The size of total bytes sent during response in case of a TCP connection",
               _LABELS)
RECEIVED = Counter("istio_tcp_received_bytes",
                   "The size of total bytes received during request in case of a TCP "
                   "connection", _LABELS)
ACTIVE_PODS = Gauge("workload_manager_active_proxy_count", "Pods the proxy serves")
PODS_STARTED = Counter("workload_manager_proxies_started", "Pod proxies started")
PODS_STOPPED = Counter("workload_manager_proxies_stopped", "Pod proxies stopped")
CONNECTIONS = Gauge("meshnode_proxy_active_connections", "Connections being relayed")
# Issue 12: what the loop guard and the limits refused, and what the error-log budget dropped.
# `reason`: loop (the destination is one of the proxy's own listeners), pod_limit /
# global_limit (connections), pod_pending_limit / global_pending_limit (upstream dials).
REFUSED = Counter("meshnode_proxy_connections_refused",
                  "Connections refused before any upstream dial (loop guard, limits)",
                  ["direction", "reason"])
PENDING_CONNECTS = Gauge("meshnode_proxy_pending_connects", "Upstream dials not yet answered")
LOG_SUPPRESSED = Counter("meshnode_proxy_log_suppressed",
                         "Error log lines dropped by the per-pod rate limit", ["event"])

# Issue 16, traffic management. Kept apart from istio_tcp_*, whose label set is ztunnel's and
# must stay so for Istio's dashboards; these say what the traffic rules did. Label values are
# bounded by the config: `destination_service` is a service key ("ns/hostname", "unknown"
# for a destination outside the registry), `route` a VirtualService route's name ("" when
# no route matched), `subset` a DestinationRule subset ("" for the whole service), `cluster`
# Istio's cluster name (outbound|port|subset|ns/hostname).
TRAFFIC_CONNECTIONS = Counter("meshnode_proxy_traffic_connections",
                              "Connections routed by traffic rules, by route and subset taken",
                              ["destination_service", "route", "subset"])
# `reason`: proxy/traffic/refusal.py's Reason (overflow, no_healthy_endpoint, connect_failed,
# connect_timeout, registry_only, unknown_destination).
TRAFFIC_REFUSED = Counter("meshnode_proxy_traffic_refused",
                          "Connections the traffic rules refused (the client gets a reset)",
                          ["reason", "destination_service"])
TRAFFIC_RETRIES = Counter("meshnode_proxy_traffic_connect_retries",
                          "Upstream connect attempts made after a failed one",
                          ["destination_service"])
TRAFFIC_EJECTIONS = Counter("meshnode_proxy_traffic_ejections",
                            "Endpoints ejected by outlier detection", ["cluster"])
TRAFFIC_EJECTED = Gauge("meshnode_proxy_traffic_ejected_endpoints",
                        "Endpoints currently ejected by outlier detection", ["cluster"])
# response_flags of a connection refused by traffic management, Envoy's (which Istio's
# dashboards know): UO upstream overflow, UH no healthy upstream, NR no route; connect
# failures keep CONNECT.
UPSTREAM_OVERFLOW = "UO"
NO_HEALTHY_UPSTREAM = "UH"
NO_ROUTE = "NR"


# -- the labels of one connection ---------------------------------------------------------------

class Party(NamedTuple):
    """One side of a connection, as its labels say it."""

    workload: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN
    cluster: str = UNKNOWN
    region: str = UNKNOWN
    zone: str = UNKNOWN


NOBODY = Party()


def _v(s: str) -> str:
    return s or UNKNOWN


def party(w: Workload | None) -> Party:
    """A mesh workload's side (ztunnel's with_source / with_destination). The principal is
    the workload's identity; it is reported only for the destination (the source's comes
    from mTLS)."""
    if w is None:
        return NOBODY
    return Party(_v(w.workload_name), _v(w.canonical_name), _v(w.canonical_revision),
                 _v(w.namespace), w.spiffe_id, w.cluster, _v(w.locality[0]),
                 _v(w.locality[1]))


def pod_party(name: str, namespace: str) -> Party:
    """A pod known only from ZDS (no control plane): its name and namespace."""
    return Party(workload=_v(name), namespace=_v(namespace))


def traffic_labels(reporter: str, source: Party, destination: Party,
                   service: Service | None, *, source_principal: str = "",
                   mtls: bool = False) -> tuple[str, ...]:
    """The istio_tcp_* label values of one connection, in `LABELS` order, response_flags
    `-` (see `with_flags`)."""
    if service is not None:
        svc = (_v(service.hostname), _v(service.namespace), _v(service.name))
    else:
        svc = (UNKNOWN, UNKNOWN, UNKNOWN)
    s, d = source, destination
    return (reporter,
            s.workload, s.canonical_service, s.canonical_revision, s.namespace,
            _v(source_principal), s.canonical_service, s.canonical_revision, s.cluster,
            *svc,
            d.workload, d.canonical_service, d.canonical_revision, d.namespace, d.principal,
            d.canonical_service, d.canonical_revision, d.cluster,
            "tcp", NO_FLAGS, MUTUAL_TLS if mtls else UNKNOWN,
            s.region, s.zone, d.region, d.zone)


def with_flags(labels: tuple[str, ...], flags: str) -> tuple[str, ...]:
    return (*labels[:_FLAGS], flags, *labels[_FLAGS + 1:])


def inbound_service(services: Mapping[str, Service], w: Workload | None, port: int,
                    host: str = "") -> Service | None:
    """The service an inbound connection to workload `w` on `port` was for (ztunnel's
    guess_inbound_service): the one of w's services the client named (`host`, from the
    CONNECT's `Forwarded: host=`), else the first whose target port is `port` (the service's
    own, or w's for that service port: a named targetPort)."""
    if w is None:
        return None
    mine = [(s, ports) for key, ports in w.services if (s := services.get(key)) is not None]
    if host:
        named = next((s for s, _ in mine if s.hostname == host), None)
        if named is not None:
            return named
    for s, ports in mine:
        for p in s.ports:
            if p.target_port == port:
                return s
            if any(wp.service_port == p.service_port and wp.target_port == port
                   for wp in ports):
                return s
    return None


# label values -> the (opened, sent, received, closed "-") children of that series: a
# connection of a known pair costs one dict lookup instead of four label lookups. Bounded
# as the registry itself is: by the series that exist.
_CHILDREN: dict[tuple[str, ...], tuple[Any, Any, Any, Any]] = {}


def _children(labels: tuple[str, ...]) -> tuple[Any, Any, Any, Any]:
    got = _CHILDREN.get(labels)
    if got is None:
        got = _CHILDREN[labels] = (OPENED.labels(*labels), SENT.labels(*labels),
                                   RECEIVED.labels(*labels), CLOSED.labels(*labels))
    return got


class ConnMetrics:
    """One connection's istio_tcp_* series, as ztunnel's ConnectionResult: opened when made,
    bytes added as they flow (`flush`), closed once with the outcome's response flags."""

    __slots__ = ("_closed", "_closed_ok", "_received", "_received_n", "_sent", "_sent_n",
                 "labels")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        opened, self._sent, self._received, self._closed_ok = _children(labels)
        opened.inc()
        self._sent_n = self._received_n = 0
        self._closed = False

    def flush(self, sent: int, received: int) -> None:
        """`sent`: the server's bytes to the client so far; `received`: the client's bytes
        to the server so far."""
        if sent > self._sent_n:
            self._sent.inc(sent - self._sent_n)
            self._sent_n = sent
        if received > self._received_n:
            self._received.inc(received - self._received_n)
            self._received_n = received

    def close(self, sent: int = 0, received: int = 0, flags: str = NO_FLAGS) -> None:
        if self._closed:
            return
        self._closed = True
        self.flush(sent, received)
        if flags == NO_FLAGS:
            self._closed_ok.inc()
        else:
            CLOSED.labels(*with_flags(self.labels, flags)).inc()


# -- certificates ----------------------------------------------------------------------------

CERT_EXPIRY = Gauge(
    "meshnode_proxy_certificate_expiry_timestamp_seconds",
    "Unix time at which the workload certificate the proxy holds for an identity expires",
    ["identity"], registry=None)
# Each source lists the certificates it holds, as CertStore.dump() does
# ({"identity", "not_after" (ISO 8601)}).
CertSource = Any


class _Certificates(Collector):
    """CERT_EXPIRY, read from the watched certificate stores when scraped (no hook on the
    certificate path; a removed identity leaves no stale series)."""

    def __init__(self) -> None:
        self.sources: list[CertSource] = []

    def describe(self) -> Iterable[Any]:
        return CERT_EXPIRY.describe()

    def collect(self) -> Iterable[Any]:
        CERT_EXPIRY.clear()
        for source in list(self.sources):
            for c in source.dump():
                expiry = datetime.fromisoformat(c["not_after"]).timestamp()
                CERT_EXPIRY.labels(c["identity"]).set(expiry)
        return CERT_EXPIRY.collect()


_CERTIFICATES = _Certificates()
REGISTRY.register(_CERTIFICATES)


def watch_certificates(source: CertSource) -> None:
    """Report the expiry of `source`'s certificates (a CertStore) until unwatched."""
    _CERTIFICATES.sources.append(source)


def unwatch_certificates(source: CertSource) -> None:
    if source in _CERTIFICATES.sources:
        _CERTIFICATES.sources.remove(source)
