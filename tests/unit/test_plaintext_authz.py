"""L4 authorization of a connection with no peer identity: plaintext inbound on 15006, as
ztunnel's inbound passthrough evaluates it (source address, no principal, no namespace).

Policies go in as the agent sends them on mesh.sock (core/mesh/channel.py), through the
proxy's table (proxy/meshconfig/table.py), so the decoding is covered too.
"""

from __future__ import annotations

from typing import Any

import pytest

from core.spiffe import parse
from proxy.authz import Decision
from proxy.meshconfig.table import MeshTable

ECHO_IP = "198.18.43.1"
OUTSIDER = "198.18.45.1"     # a client outside the mesh
SLEEP = parse("spiffe://cluster.local/ns/default/sa/sleep")


def _table(*policies: dict[str, Any]) -> MeshTable:
    t = MeshTable()
    t.apply({"t": "snapshot", "trust_domain": "cluster.local",
             "workloads": [
                 {"uid": "echo", "name": "echo", "ns": "default", "ips": [ECHO_IP],
                  "id": "spiffe://cluster.local/ns/default/sa/echo", "hbone": True,
                  "pol": [p["key"] for p in policies if p["scope"] == 2]},
                 {"uid": "other", "name": "other", "ns": "other", "ips": ["198.18.43.2"],
                  "id": "spiffe://cluster.local/ns/other/sa/other", "hbone": True}],
             "policies": list(policies)})
    return t


def _policy(name: str, action: int, groups: list[list[list[dict[str, Any]]]],
            scope: int = 2, ns: str = "default") -> dict[str, Any]:
    # action: 0 ALLOW, 1 DENY; scope: 0 GLOBAL, 1 NAMESPACE, 2 WORKLOAD_SELECTOR
    return {"key": f"{ns}/{name}", "name": name, "ns": ns, "scope": scope, "action": action,
            "groups": groups}


def _plain(t: MeshTable, src: str = OUTSIDER, dst: str = ECHO_IP, port: int = 8080) -> Decision:
    w = t.workload_by_ip(dst)
    assert w is not None
    return t.authorize(w, w.namespace, None, src, dst, port)


SLEEP_PRINCIPAL = ["exact", "cluster.local/ns/default/sa/sleep"]
ALLOW_SLEEP = _policy("allow-sleep", 0, [[[{"principals": [SLEEP_PRINCIPAL]}]]])
DENY_ALL = _policy("deny-all", 1, [[]], scope=1)  # one group with no rules: matches all
DENY_OUTSIDERS = _policy("deny-outsiders", 1, [[[{"source_ips": ["198.18.45.0/24"]}]]])


def test_allow_by_principal_refuses_a_client_without_identity() -> None:
    t = _table(ALLOW_SLEEP)
    assert _plain(t) == Decision(False, "not_allowed")
    # The same connection with sleep's identity is the one the policy lets in.
    w = t.workload_by_ip(ECHO_IP)
    assert t.authorize(w, "default", SLEEP, OUTSIDER, ECHO_IP, 8080) == \
        Decision(True, "allowed", "default/allow-sleep")


def test_namespace_wide_deny_all_refuses_plaintext_only_in_its_namespace() -> None:
    t = _table(DENY_ALL)
    assert _plain(t) == Decision(False, "denied_by_policy", "default/deny-all")
    assert _plain(t, dst="198.18.43.2") == Decision(True, "no_allow_policies")


def test_deny_by_ip_block_matches_the_client_address() -> None:
    t = _table(DENY_OUTSIDERS)
    assert _plain(t) == Decision(False, "denied_by_policy", "default/deny-outsiders")
    # A dual-stack listener shows an IPv4 client v4-mapped: still the same client.
    assert _plain(t, src=f"::ffff:{OUTSIDER}") == \
        Decision(False, "denied_by_policy", "default/deny-outsiders")
    assert _plain(t, src="198.18.41.1") == Decision(True, "no_allow_policies")


def test_allow_by_ip_block_admits_plaintext() -> None:
    t = _table(_policy("allow-outsiders", 0, [[[{"source_ips": ["198.18.45.0/24"]}]]]))
    assert _plain(t) == Decision(True, "allowed", "default/allow-outsiders")
    assert _plain(t, src="198.18.41.1") == Decision(False, "not_allowed")


@pytest.mark.parametrize("match", [
    {"namespaces": [["exact", "default"]]},
    {"namespaces": [["presence", ""]]},
    {"service_accounts": [["default", "sleep"]]},
    {"principals": [["presence", ""]]},
])
def test_identity_fields_never_admit_a_client_without_identity(match: dict[str, Any]) -> None:
    t = _table(_policy("allow-id", 0, [[[match]]]))
    assert _plain(t) == Decision(False, "not_allowed")


@pytest.mark.parametrize("match", [
    {"not_principals": [["exact", "cluster.local/ns/default/sa/sleep"]]},
    {"not_service_accounts": [["default", "sleep"]]},
    # ztunnel compares a missing namespace as "": it is not "default".
    {"not_namespaces": [["exact", "default"]]},
])
def test_negated_identity_fields_deny_a_client_without_identity(match: dict[str, Any]) -> None:
    t = _table(_policy("deny-not-sleep", 1, [[[match]]]))
    assert _plain(t) == Decision(False, "denied_by_policy", "default/deny-not-sleep")
