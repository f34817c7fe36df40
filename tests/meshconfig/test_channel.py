"""The agent → proxy mesh config channel over a real unix socket: snapshot, deltas,
certificates, and the proxy's routing decisions from what arrived (no root needed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.identity.bundle import CertBundle as AgentBundle
from agent.identity.manager import IdentityManager
from agent.meshconfig.server import MeshConfigServer
from agent.xds.state import XdsState
from core.mesh.model import (
    Group,
    LbMode,
    Match,
    Policy,
    PolicyAction,
    PolicyScope,
    Port,
    Rule,
    Service,
    StringKind,
    StringMatch,
    Vip,
    Workload,
    WorkloadStatus,
)
from core.spiffe import parse
from proxy.meshconfig.runtime import ProxyMesh
from proxy.meshconfig.table import NoEndpoint
from tests.xds.helpers import run, until

SVC = "default/echo.default.svc.cluster.local"


def wl(name: str, ip: str, healthy: bool = True, hbone: bool = True) -> Workload:
    return Workload(uid=f"uid-{name}", name=name, namespace="default", addresses=(ip,),
                    node="node2", service_account=name, tunnel_protocol=1 if hbone else 0,
                    services=((SVC, (Port(80, 8080),)),),
                    status=WorkloadStatus.HEALTHY if healthy else WorkloadStatus.UNHEALTHY)


def svc(lb: int = LbMode.UNSPECIFIED_MODE) -> Service:
    return Service(name="echo", namespace="default", hostname="echo.default.svc.cluster.local",
                   vips=(Vip("", "198.19.0.10"),), ports=(Port(80, 8080),), lb_mode=lb)


class NoCa:
    async def fetch(self, identity: str) -> AgentBundle:  # never asked: no local pods
        raise AssertionError("unexpected certificate fetch")


async def pair(tmp: Path) -> tuple[XdsState, MeshConfigServer, ProxyMesh, IdentityManager]:
    state = XdsState("node1")
    ids = IdentityManager(NoCa())
    server = MeshConfigServer(str(tmp / "mesh.sock"), state, ids)
    await server.start()
    mesh = ProxyMesh(str(tmp / "mesh.sock"))
    mesh.start()
    return state, server, mesh, ids


def test_snapshot_deltas_and_routing(tmp_path: Path) -> None:
    async def go() -> None:
        state, server, mesh, ids = await pair(tmp_path)
        state.apply([svc(), wl("e1", "198.18.1.1"), wl("e2", "198.18.1.2"),
                     wl("sick", "198.18.1.3", healthy=False)])
        await until(mesh.ready, what="snapshot")
        assert stat.S_IMODE(os.stat(tmp_path / "mesh.sock").st_mode) == 0o600
        t = mesh.table
        await until(lambda: len(t.workloads) == 3, what="workloads")
        # Round robin over the healthy endpoints, target port from the workload's port map.
        picks = [t.route(("198.19.0.10", 80)).addr for _ in range(4)]
        assert picks == [("198.18.1.1", 8080), ("198.18.1.2", 8080)] * 2
        tgt = t.route(("198.19.0.10", 80))
        assert tgt.hbone and tgt.identities() == ["spiffe://cluster.local/ns/default/sa/e1"]
        # A port the service does not have, and a non-mesh IP, are left alone.
        assert t.route(("198.19.0.10", 81)).addr == ("198.19.0.10", 81)
        assert t.route(("198.18.9.9", 5)).workload is None
        assert t.route(("198.18.1.1", 8080)).hbone  # a pod IP directly: still tunnelled
        # Deltas: removal, passthrough mode, no endpoints.
        state.apply(removed_addresses=["uid-e1"])
        await until(lambda: "uid-e1" not in t.workloads, what="removal")
        assert {t.route(("198.19.0.10", 80)).addr for _ in range(3)} == {("198.18.1.2", 8080)}
        state.apply([svc(LbMode.PASSTHROUGH)])
        await until(lambda: t.services[SVC].lb_mode == LbMode.PASSTHROUGH, what="lb mode")
        assert t.route(("198.19.0.10", 80)).addr == ("198.19.0.10", 80)
        state.apply([svc()], removed_addresses=["uid-e2"])
        await until(lambda: "uid-e2" not in t.workloads, what="removal")
        with pytest.raises(NoEndpoint):
            t.route(("198.19.0.10", 80))
        await mesh.close()
        await server.close()
        await ids.close()
    run(go())


def test_policies_reach_the_authorizer(tmp_path: Path) -> None:
    async def go() -> None:
        state, server, mesh, ids = await pair(tmp_path)
        await until(mesh.ready, what="snapshot")
        deny = Policy(name="deny-sleep", namespace="default", scope=PolicyScope.NAMESPACE,
                      action=PolicyAction.DENY,
                      groups=(Group((Rule((Match(principals=(StringMatch(
                          StringKind.EXACT, "cluster.local/ns/default/sa/sleep"),)),)),)),))
        state.apply([wl("e1", "198.18.1.1"), deny])
        t = mesh.table
        await until(lambda: "default/deny-sleep" in t.policies, what="policy")
        me = t.workload_by_ip("198.18.1.1")
        sleep, other = (parse("spiffe://cluster.local/ns/default/sa/sleep"),
                        parse("spiffe://cluster.local/ns/default/sa/other"))
        d = t.authorize(me, "default", sleep, "198.18.2.1", "198.18.1.1", 8080)
        assert not d.allowed and d.policy == "default/deny-sleep"
        assert t.authorize(me, "default", other, "198.18.2.1", "198.18.1.1", 8080).allowed
        state.apply(removed_policies=["default/deny-sleep"])
        await until(lambda: not t.policies, what="policy removal")
        assert t.authorize(me, "default", sleep, "198.18.2.1", "198.18.1.1", 8080).allowed
        await mesh.close()
        await server.close()
        await ids.close()
    run(go())


def test_a_reconnecting_proxy_gets_a_fresh_snapshot(tmp_path: Path) -> None:
    async def go() -> None:
        state, server, mesh, ids = await pair(tmp_path)
        state.apply([svc(), wl("e1", "198.18.1.1")])
        await until(lambda: len(mesh.table.workloads) == 1, what="first sync")
        await server.close()  # the agent restarts; meanwhile the state moves on
        state.apply([wl("e2", "198.18.1.2")], removed_addresses=["uid-e1"])
        server2 = MeshConfigServer(str(tmp_path / "mesh.sock"), state, ids)
        await server2.start()
        await until(lambda: set(mesh.table.workloads) == {"uid-e2"}, timeout=10,
                    what="resync from the new snapshot")
        await mesh.close()
        await server2.close()
        await ids.close()
    run(go())


def test_certificates_travel_in_memory(tmp_path: Path) -> None:
    from agent.identity.csr import make_csr
    from tests.xds.helpers import Ca  # a throwaway CA

    async def go() -> None:
        _state, server, mesh, ids = await pair(tmp_path)
        await until(mesh.ready, what="snapshot")
        ca = Ca.new()
        identity = "spiffe://cluster.local/ns/default/sa/sleep"
        kc = make_csr(identity)
        b = AgentBundle(identity=identity, key_pem=kc.key_pem(),
                        chain_pem=(ca.sign_csr(kc.csr_pem, 3600),),
                        roots_pem=(ca.pem.decode(),), not_before=0, not_after=2e9)
        server._on_cert(identity, b)
        sid = parse(identity)
        await until(lambda: bool(mesh.certs.dump()), what="certificate")
        assert mesh.certs.bundle(sid).identity == sid
        server._on_cert(identity, None)
        await until(lambda: not mesh.certs.dump(), what="certificate removal")
        await mesh.close()
        await server.close()
        await ids.close()
    run(go())
