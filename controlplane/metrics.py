"""The control plane's Prometheus metrics, served at `/metrics` on the monitoring address
(`--metrics-address`, 127.0.0.1:15014 by default: istiod's monitoring port).

The default registry, as in the agent: it also carries the process collectors (CPU, memory,
file descriptors). One process runs one control plane; in-process tests that start several
see them share these series (they compare before/after values).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from controlplane.resources import SERVED_TYPES

ADS_CLIENTS = Gauge(
    "meshnode_controlplane_ads_clients",
    "Open Delta ADS streams with a valid node token, by node", ["node"], registry=REGISTRY)
PUSHES = Counter(
    "meshnode_controlplane_xds_pushes",
    "Delta ADS responses sent, by type URL and trigger (request: an answer to a "
    "subscription; change: a change of the objects)", ["type_url", "trigger"], registry=REGISTRY)
NACKS = Counter(
    "meshnode_controlplane_xds_nacks",
    "Delta ADS responses refused by a client (requests with error_detail), by type URL",
    ["type_url"], registry=REGISTRY)
RESOURCES = Gauge(
    "meshnode_controlplane_resources",
    "Resources in the served snapshot, by type URL", ["type_url"], registry=REGISTRY)
CSR_SIGNED = Counter(
    "meshnode_controlplane_csr_signed", "Workload certificates signed (CreateCertificate)",
    registry=REGISTRY)
CSR_REFUSED = Counter(
    "meshnode_controlplane_csr_refused", "CreateCertificate requests refused, by reason",
    ["reason"], registry=REGISTRY)
MESH_VERSION = Gauge(
    "meshnode_controlplane_mesh_version",
    "The served push version (system_version_info): +1 on every change that moved a resource",
    registry=REGISTRY)
MESH_LOADED = Gauge(
    "meshnode_controlplane_mesh_last_reload_timestamp_seconds",
    "Unix time the served mesh was loaded (start or the last accepted reload)",
    registry=REGISTRY)
TRAFFIC_REFUSED = Counter(
    "meshnode_controlplane_traffic_objects_refused",
    "VirtualServices, DestinationRules and Sidecars refused by the conversion (each new "
    "reason counted once; the last good version of the object stays in force), by kind",
    ["kind"], registry=REGISTRY)
PUSH_LATENCY = Histogram(
    "meshnode_controlplane_push_latency_seconds",
    "From the change of the objects (the watch event, or the first inotify event of a file "
    "edit) to a push handed to gRPC, per stream and type", registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))

# `reason` values of CSR_REFUSED (bounded: the messages themselves go to the log).
UNAUTHENTICATED = "unauthenticated"        # no valid node token or Kubernetes token
AUTH_UNAVAILABLE = "auth_unavailable"      # the API server could not check the token
NOT_OWN_IDENTITY = "not_own_identity"      # a workload's token asked for another identity
BAD_CSR = "bad_csr"                        # not PEM PKCS#10, bad signature, weak key, 2+ URI SANs
BAD_IDENTITY = "bad_identity"              # no identity, not a SPIFFE ID, SAN vs impersonated
FOREIGN_TRUST_DOMAIN = "foreign_trust_domain"
NODE_NOT_AUTHORIZED = "node_not_authorized"  # no workload of that identity on the caller's node
BAD_TTL = "bad_ttl"                        # negative validity_duration
REFUSAL_REASONS = (UNAUTHENTICATED, AUTH_UNAVAILABLE, BAD_CSR, BAD_IDENTITY,
                   FOREIGN_TRUST_DOMAIN, NODE_NOT_AUTHORIZED, NOT_OWN_IDENTITY, BAD_TTL)

# Every bounded series exists from the start at 0, so rate() and alerts see the first event.
for _t in SERVED_TYPES:
    NACKS.labels(type_url=_t)
    for _trigger in ("request", "change"):
        PUSHES.labels(type_url=_t, trigger=_trigger)
for _reason in REFUSAL_REASONS:
    CSR_REFUSED.labels(reason=_reason)
for _kind in ("VirtualService", "DestinationRule", "Sidecar"):
    TRAFFIC_REFUSED.labels(kind=_kind)
