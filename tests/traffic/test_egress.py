"""The egress decision: registry destinations by VIP, CIDR, host name or port; Sidecar egress
hosts; REGISTRY_ONLY refusals with their reason, ALLOW_ANY passthrough."""

from __future__ import annotations

import pytest

from core.mesh.model import Port, Service, Vip
from core.mesh.traffic import EgressHost, EgressListener, EgressPolicy, OutboundMode
from proxy.traffic.egress import Registry, decide, egress_hosts, imported
from proxy.traffic.refusal import Reason, Refused
from tests.traffic.fakes import service

ONLY, ANY = OutboundMode.REGISTRY_ONLY, OutboundMode.ALLOW_ANY
REVIEWS = service("reviews", "10.96.0.70", [(9080, 9080)], ns="prod")
RATINGS = service("ratings", "10.96.0.71", [(9080, 9080)], ns="test")


def entry(host: str, ns: str = "egress", addresses: tuple[Vip, ...] = (),
          ports: tuple[int, ...] = (443,)) -> Service:
    """A ServiceEntry host as the control plane converts it (controlplane/ambient)."""
    return Service(name="se", namespace=ns, hostname=host, vips=addresses,
                   ports=tuple(Port(p, p) for p in ports))


WIKI = entry("en.wikipedia.org", addresses=(Vip("", "240.240.0.1"),))
WILD = entry("*.googleapis.com")
NET = entry("db.corp", addresses=(Vip("", "192.168.10.0", 24),), ports=(5432,))
MONGO = entry("mongo.external", ports=(27017,))
REGISTRY = Registry([REVIEWS, RATINGS, WIKI, WILD, NET, MONGO], workload_ips={"10.0.0.5"})


def sidecar(*hosts: str, port: int = 0, mode: OutboundMode = ONLY,
            ns: str = "prod") -> EgressPolicy:
    return EgressPolicy(ns, "default", mode,
                        (EgressListener(tuple(EgressHost.parse(h) for h in hosts), port),))


def test_allow_any_passes_unknown_destinations_through() -> None:
    d = decide(None, REGISTRY, 443, ip="203.0.113.9")
    assert d.allowed and d.passthrough and d.reason is None
    d = decide(None, REGISTRY, 9080, ip="10.96.0.70")
    assert d.allowed and d.service is REVIEWS and not d.passthrough


def test_registry_only_refuses_unknown_destinations() -> None:
    policy = EgressPolicy("prod", mode=ONLY)
    d = decide(policy, REGISTRY, 443, ip="203.0.113.9")
    assert not d.allowed and d.reason == Reason.REGISTRY_ONLY and str(d.reason) == "registry_only"
    assert "203.0.113.9:443: not a service of the registry" in d.detail
    with pytest.raises(Refused) as refused:
        d.check()
    assert refused.value.reason == Reason.REGISTRY_ONLY
    # a service VIP, but not one of its ports: not a registry destination either
    assert not decide(policy, REGISTRY, 80, ip="10.96.0.70").allowed


def test_registry_destinations_by_vip_cidr_and_name() -> None:
    policy = EgressPolicy("prod", mode=ONLY)
    assert decide(policy, REGISTRY, 443, ip="240.240.0.1").service is WIKI
    assert decide(policy, REGISTRY, 5432, ip="192.168.10.77").service is NET
    assert not decide(policy, REGISTRY, 5432, ip="192.168.11.1").allowed
    # SNI (or the name the DNS proxy answered) finds a wildcard ServiceEntry
    assert decide(policy, REGISTRY, 443, ip="142.250.1.1",
                  host="storage.googleapis.com").service is WILD
    assert not decide(policy, REGISTRY, 443, ip="142.250.1.1", host="evil.com").allowed
    # a DNS query: a name alone, any port of the service
    assert decide(policy, REGISTRY, 0, host="EN.wikipedia.org.").service is WIKI
    assert not decide(policy, REGISTRY, 0, host="de.wikipedia.org").allowed


def test_an_entry_without_addresses_is_known_by_its_port_alone() -> None:
    # Istio: "If the Addresses field is empty, traffic will be identified solely based on
    # the destination port" -- when no host name tells otherwise.
    policy = EgressPolicy("prod", mode=ONLY)
    assert decide(policy, REGISTRY, 27017, ip="198.51.100.7").service is MONGO
    assert not decide(policy, REGISTRY, 27018, ip="198.51.100.7").allowed
    # ... but a wildcard entry needs the name (SNI, or the name the DNS proxy answered)
    assert not decide(policy, REGISTRY, 443, ip="198.51.100.7").allowed
    assert not decide(policy, REGISTRY, 27017, ip="198.51.100.7", host="other.org").allowed


def test_mesh_workloads_are_not_egress() -> None:
    d = decide(EgressPolicy("prod", mode=ONLY), REGISTRY, 8080, ip="10.0.0.5")
    assert d.allowed and d.passthrough


def test_sidecar_hosts_import_by_namespace_and_name() -> None:
    assert imported(sidecar("./*"), REVIEWS, 9080)                   # "." the Sidecar's ns
    assert not imported(sidecar("./*"), RATINGS, 9080)
    assert imported(sidecar("test/*"), RATINGS, 9080)
    assert imported(sidecar("*/ratings.test.svc.cluster.local"), RATINGS, 9080)
    assert not imported(sidecar("*/reviews.prod.svc.cluster.local"), RATINGS, 9080)
    assert not imported(sidecar("~/*"), REVIEWS, 9080)                # "~" imports nothing
    assert imported(sidecar("*/*.wikipedia.org"), WIKI, 443)
    # a wildcard entry is imported for the names an egress host covers
    assert imported(sidecar("egress/storage.googleapis.com"), WILD, 443,
                    "storage.googleapis.com")
    assert not imported(sidecar("egress/storage.googleapis.com"), WILD, 443,
                        "mail.googleapis.com")
    assert imported(EgressPolicy("prod"), RATINGS, 9080)              # no listeners: all


def test_a_service_not_imported_is_refused_or_passed_through() -> None:
    only = sidecar("./*", "egress/*")
    d = decide(only, REGISTRY, 9080, ip="10.96.0.71")
    assert not d.allowed and d.reason == Reason.REGISTRY_ONLY
    assert "test/ratings.test.svc.cluster.local not imported" in d.detail
    assert "Sidecar prod/default" in d.detail
    anyway = sidecar("./*", mode=ANY)
    d = decide(anyway, REGISTRY, 9080, ip="10.96.0.71")
    assert d.allowed and d.passthrough  # outside the Sidecar's view: no mesh routing


def test_the_listener_with_the_port_wins() -> None:
    policy = EgressPolicy("prod", "default", ONLY, (
        EgressListener((EgressHost.parse("test/*"),), 9080),
        EgressListener((EgressHost.parse("./*"),)),
    ))
    assert egress_hosts(policy, 9080) == (EgressHost("test", "*"),)
    assert egress_hosts(policy, 80) == (EgressHost(".", "*"),)
    assert len(egress_hosts(policy, 0) or ()) == 2
    assert decide(policy, REGISTRY, 9080, ip="10.96.0.71").allowed      # ratings via 9080
    assert not decide(policy, REGISTRY, 9080, ip="10.96.0.70").allowed  # reviews is not
    assert egress_hosts(EgressPolicy("prod"), 80) is None
