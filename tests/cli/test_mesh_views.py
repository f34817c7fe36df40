"""Every node-local `meshnode` view against a real mesh: a control plane, and on each node a
real agent and proxy (tests/cli/conftest.py). The commands run inside a node's netns, as on
a node."""

from __future__ import annotations

import datetime as dt
import json
import socket

import pytest
import yaml

from testing.mesh_topology import VIP
from tests.cli.clirun import meshnode, meshnode_json
from tests.cli.conftest import ECHO_ID, SLEEP_ID, Mesh

pytestmark = pytest.mark.kernel


def test_version_names_client_agent_proxy_and_the_control_plane(mesh: Mesh) -> None:
    d = meshnode_json("version", *mesh.node_flags(mesh.n1), netns=mesh.n1.node.path)
    assert d["client"]["version"] and d["client"]["component"] == "cli"
    assert d["agent"]["running"] and d["agent"]["component"] == "agent"
    assert d["agent"]["version"] == d["client"]["version"]
    assert d["proxy"]["running"] and d["proxy"]["component"] == "proxy"
    # The replica the agent follows names itself in every response (control_plane.identifier).
    assert d["controlplane"] == {"address": mesh.cp.address, "connected": True,
                                 "version": d["client"]["version"], "id": socket.gethostname()}
    text = meshnode("version", *mesh.node_flags(mesh.n1), netns=mesh.n1.node.path).stdout
    assert "agent" in text and "node proxy" in text and mesh.cp.address in text
    short = meshnode("version", "--client", "--short").stdout
    assert short.strip() == d["client"]["version"]


def test_status_of_a_healthy_node(mesh: Mesh) -> None:
    st = meshnode_json("status", *mesh.node_flags(mesh.n1), netns=mesh.n1.node.path)
    assert st["problems"] == []
    assert st["node"]
    ag = st["agent"]
    assert ag["ready"] is True and ag["pods"]["enrolled"] == 1 and ag["pods"]["total"] == 1
    assert ag["backends"] == ["nftables"] and ag["proxies_connected"] == 1
    assert ag["drift"]["repairs"] == 0
    cp = st["controlplane"]
    assert cp["controlplane"] == mesh.cp.address and cp["connected"] and cp["ready"]
    assert cp["acks"] >= 1 and cp["nacks"] == 0 and cp["last_nack"] == ""
    assert cp["last_ack_at"] > 0
    assert cp["controlplane_identity"] == {"component": "meshnode-controlplane",
                                           "id": socket.gethostname(),
                                           "version": st["agent"]["version"]}
    assert cp["workloads"] >= 2 and cp["services"] == 1 and cp["policies"] == 1
    px = st["proxy"]
    assert px["running"] and px["ready"] and px["agent_connected"]
    assert px["pods_served"] == 1 and px["connections"] >= 1
    assert px["mesh"]["synced"] is True
    assert SLEEP_ID in {c["identity"] for c in px["certificates"]}
    r = meshnode("status", *mesh.node_flags(mesh.n1), netns=mesh.n1.node.path)
    assert r.returncode == 0, r.stderr
    for word in ("Agent", "Proxy", "Control plane", "1 enrolled", "No problems found",
                 mesh.cp.address):
        assert word in r.stdout, r.stdout


def test_proxy_config_workloads(mesh: Mesh) -> None:
    rows = meshnode_json("proxy-config", "workloads", "--proxy-admin",
                         f"127.0.0.1:{mesh.n1.proxy.port}", netns=mesh.n1.node.path)
    by_name = {(w["namespace"], w["name"]): w for w in rows}
    sleep, echo = by_name[("default", "sleep")], by_name[("default", "echo")]
    assert sleep["local"] and not echo["local"]
    assert sleep["addresses"] == [mesh.t.a.ip4] and echo["addresses"] == [mesh.t.b.ip4]
    assert sleep["identity"] == SLEEP_ID and echo["identity"] == ECHO_ID
    assert echo["protocol"] == "HBONE" and echo["node"] == "node2"
    assert "default/echo.default.svc.cluster.local" in echo["services"]
    # --pod: only that pod; a pod this proxy does not serve is an error that says so.
    [only] = meshnode_json("proxy-config", "workloads", "--pod", "default/sleep",
                           "--proxy-admin", f"127.0.0.1:{mesh.n1.proxy.port}",
                           netns=mesh.n1.node.path)
    assert only["name"] == "sleep"
    r = meshnode("proxy-config", "workloads", "--pod", "default/echo", "--proxy-admin",
                 f"127.0.0.1:{mesh.n1.proxy.port}", netns=mesh.n1.node.path)
    assert r.returncode == 2 and "pod default/echo is not served by the node proxy" in r.stderr
    assert "default/sleep" in r.stderr
    table = meshnode("pc", "workloads", "--proxy-admin", f"127.0.0.1:{mesh.n1.proxy.port}",
                     netns=mesh.n1.node.path).stdout
    assert "NAMESPACE" in table and "IDENTITY" in table and SLEEP_ID in table


def test_proxy_config_services_and_policies(mesh: Mesh) -> None:
    flags = ["--proxy-admin", f"127.0.0.1:{mesh.n2.proxy.port}"]
    [svc] = meshnode_json("proxy-config", "services", *flags, netns=mesh.n2.node.path)
    assert svc["name"] == "echo" and svc["vips"] == [VIP]
    assert svc["ports"] == [{"port": 80, "target_port": 8080}]
    assert [e["addresses"] for e in svc["endpoints"]] == [[mesh.t.b.ip4]]
    assert svc["healthy_endpoints"] == 1
    [pol] = meshnode_json("proxy-config", "policies", *flags, netns=mesh.n2.node.path)
    assert (pol["namespace"], pol["name"], pol["action"]) == ("default", "deny-nobody", "deny")
    principals = json.dumps(pol["groups"])
    assert "cluster.local/ns/default/sa/nobody" in principals
    y = meshnode("proxy-config", "policies", *flags, "-o", "yaml", netns=mesh.n2.node.path)
    assert yaml.safe_load(y.stdout)[0]["name"] == "deny-nobody"
    assert meshnode_json("proxy-config", "policies", *flags, "-n", "other",
                         netns=mesh.n2.node.path) == []


def test_proxy_config_certificates(mesh: Mesh) -> None:
    flags = ["--proxy-admin", f"127.0.0.1:{mesh.n1.proxy.port}"]
    [cert] = meshnode_json("proxy-config", "certificates", *flags, netns=mesh.n1.node.path)
    dump = mesh.n1.proxy_mesh()["certificates"]
    assert cert["identity"] == SLEEP_ID and cert["state"] == "valid"
    assert cert["serial"] == dump[0]["serial"]
    now = dt.datetime.now(dt.UTC)
    assert dt.datetime.fromisoformat(cert["not_before"]) <= now < \
        dt.datetime.fromisoformat(cert["not_after"])
    leaf = cert["chain"][0]
    assert leaf["uri_sans"] == [SLEEP_ID] and leaf["serial"] == cert["serial"]
    assert not leaf["ca"] and cert["roots"] and all(r["ca"] for r in cert["roots"])
    assert leaf["issuer"] in {r["subject"] for r in cert["roots"]} | \
        {c["subject"] for c in cert["chain"][1:]}
    table = meshnode("proxy-config", "certificates", *flags, netns=mesh.n1.node.path).stdout
    assert cert["serial"] in table and "SERIAL" in table


def test_proxy_config_connections_on_both_ends(mesh: Mesh) -> None:
    out = meshnode_json("proxy-config", "connections", "--proxy-admin",
                        f"127.0.0.1:{mesh.n1.proxy.port}", netns=mesh.n1.node.path)
    [c] = [c for c in out if c["direction"] == "outbound"]
    assert c["pod"] == "default/sleep" and c["src"].startswith(mesh.t.a.ip4 + ":")
    assert c["dst"] == f"{mesh.t.b.ip4}:8080"
    assert (c["source_identity"], c["destination_identity"]) == (SLEEP_ID, ECHO_ID)
    assert c["protocol"] == "HBONE" and c["sent"] >= mesh.sent and c["received"] >= mesh.sent
    inbound = meshnode_json("proxy-config", "connections", "--pod", "default/echo",
                            "--proxy-admin", f"127.0.0.1:{mesh.n2.proxy.port}",
                            netns=mesh.n2.node.path)
    [i] = [i for i in inbound if i["direction"] == "inbound"]
    assert i["src"].startswith(mesh.t.a.ip4 + ":") and i["source_identity"] == SLEEP_ID
    assert i["destination_identity"] == ECHO_ID


def test_pods_names_the_proxy_view(mesh: Mesh) -> None:
    [p] = meshnode_json("pods", *mesh.node_flags(mesh.n1), netns=mesh.n1.node.path)
    assert (p["namespace"], p["name"], p["state"]) == ("default", "sleep", "enrolled")
    assert p["proxy"]["connections"] >= 1


def test_redirect_show_and_diff_by_pod_name(mesh: Mesh) -> None:
    flags = ["--config", str(mesh.n1.agent.config)]
    d = meshnode_json("redirect", "diff", "--pod", "default/sleep", *flags,
                      netns=mesh.n1.node.path)
    assert d["in_sync"] is True and d["netns"] == mesh.t.a.path and d["backend"] == "nftables"
    assert d["pod"] == "default/sleep" and d["state"] == "enrolled"
    show = meshnode_json("redirect", "show", "--pod", "default/sleep", *flags,
                         netns=mesh.n1.node.path)
    assert show["rules"] and {"meshnode-nat", "meshnode-mangle"} <= {
        r["table"] for r in show["rules"]}
    assert all(r["present"] for r in show["routing"])
    # A pod this agent did not enroll: the pods it holds are named.
    r = meshnode("redirect", "show", "--pod", "default/echo", *flags, netns=mesh.n1.node.path)
    assert r.returncode == 2
    assert "pod default/echo is not enrolled on this node" in r.stderr
    assert "default/sleep" in r.stderr
