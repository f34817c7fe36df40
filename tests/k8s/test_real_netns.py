"""The pod source with the real Enroller (and the real agent) on real lab network namespaces:
the pod's netns is found by its IP, then rules are written and removed as labels change."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from agent.config import AgentConfig, CaptureConfig
from agent.k8s import netns as finder
from agent.nodeagent.enroll import Enroller
from agent.nodeagent.pods import PodStore
from agent.redirect import backend as engine
from agent.redirect.spec import RedirectSpec
from testing.agent_harness import AgentProc, cni
from testing.fakeapi import FakeApi, ThreadedFakeApi, namespace, node, pod
from testing.lab import Lab
from tests.k8s.conftest import NODE, eventually, run, source_for

pytestmark = pytest.mark.kernel
ON = {"meshnode.io/dataplane-mode": "enabled"}


def has_rules(netns: str) -> bool:
    return bool(engine.read(netns, RedirectSpec(), engine.make_backend("nftables")).rules)


def test_find_by_ips_through_proc_verifies_the_ip() -> None:
    with Lab("kf") as lab:
        a, b = lab.node("a"), lab.node("b")
        lab.link(a, b, subnet=7, ipv6=False)
        sleeper = subprocess.Popen(["ip", "netns", "exec", a.name, "sleep", "30"])
        try:
            deadline = time.monotonic() + 5
            found = None
            while found is None and time.monotonic() < deadline:
                # No bind mounts: only a process in the netns can lead us there.
                found = finder.find_by_ips([a.ip4], netns_dirs=())
                time.sleep(0.05)
            assert found is not None and found.startswith("/proc/") and found.endswith(
                "/ns/net"), found
            assert finder.find_by_ips([a.ip4]) == a.path  # a bind mount is preferred
            assert finder.find_by_ips([b.ip4]) == b.path
            assert finder.find_by_ips(["198.18.250.250"]) is None  # nobody holds it
            assert finder.find_by_ips([b.ip4], netns_dirs=()) is None  # no process in b
        finally:
            sleeper.kill()
            sleeper.wait()


def test_label_enrolls_a_running_pod_found_by_ip_with_the_real_enroller(
        tmp_path: Path) -> None:
    cfg = AgentConfig(state_dir=str(tmp_path / "state"),
                      capture=CaptureConfig(backend="nftables"))
    enroller = Enroller(cfg, PodStore(cfg.pods_dir))  # no node proxy: rules only

    async def body(web_path: str, web_ip: str, other_ip: str) -> None:
        api = await FakeApi().start()
        api.put("nodes", node(NODE, []))
        api.put("namespaces", namespace("shop"))
        api.put("pods", pod("web", "shop", ip=web_ip, uid="web"))
        api.put("pods", pod("db", "shop", ip=other_ip, uid="db",
                            labels={"meshnode.io/dataplane-mode": "disabled"}))
        async with source_for(api, enroller, tmp_path, find_netns=finder.find_by_ips):
            await asyncio.sleep(0.3)
            # pyroute2 runs its own loop: netlink reads go on a thread, as in the agent.
            assert not await asyncio.to_thread(has_rules, web_path)
            api.relabel("namespaces", "ns-shop", ON)  # label a running pod's namespace
            await eventually(lambda: api.annotation("web") == "enabled", timeout=10,
                             what="enrolled and annotated")
            [rec] = enroller.store.all()
            assert (rec.netns, rec.ips, rec.uid, rec.name) == (web_path, [web_ip], "web", "web")
            assert (await asyncio.to_thread(engine.diff, web_path, RedirectSpec(),
                                            enroller.impl)).in_sync
            assert api.annotation("db") is None
            api.relabel("pods", "web", {"meshnode.io/dataplane-mode": "disabled"})
            await eventually(lambda: not enroller.store.all(), timeout=10, what="released")
            assert not await asyncio.to_thread(has_rules, web_path)
            await eventually(lambda: api.annotation("web") is None)
        await api.stop()

    with Lab("kr") as lab:
        web, db = lab.node("web"), lab.node("db")
        lab.link(web, db, subnet=8, ipv6=False)
        run(body(web.path, web.ip4, db.ip4), timeout=30)
        assert not has_rules(db.path)


def test_agent_with_kubernetes_enabled(tmp_path: Path) -> None:
    """The real `meshnode agent`: starts the source from its config, untaints the node once
    ready, enrolls a labelled running pod, and decides CNI ADDs by labels."""
    with ThreadedFakeApi() as fake, Lab("ka") as lab:
        api = fake.api
        running, new, plain = lab.node("run"), lab.node("new"), lab.node("plain")
        peer = lab.node("peer")
        for i, n in enumerate((running, new, plain)):
            lab.link(n, peer, subnet=20 + i, ipv6=False)
        fake.call(api.put, "nodes", node(NODE, [
            {"key": "meshnode.io/not-ready", "effect": "NoSchedule"},
            {"key": "keep/me", "effect": "NoSchedule"}]))
        fake.call(api.put, "namespaces", namespace("mesh", ON))
        fake.call(api.put, "namespaces", namespace("default"))
        fake.call(api.put, "pods", pod("running", "mesh", ip=running.ip4, uid="running"))
        fake.call(api.put, "pods", pod("new", "mesh", ip="", uid="new"))
        fake.call(api.put, "pods", pod("plain", "default", ip="", uid="plain"))
        agent = AgentProc(tmp_path)
        cfg = yaml.safe_load(agent.config.read_text())
        cfg["kubernetes"] = {"enabled": True, "node_name": NODE,
                             "kubeconfig": api.kubeconfig(tmp_path / "kubeconfig")}
        agent.config.write_text(yaml.safe_dump(cfg))
        agent.start()
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and fake.call(api.annotation, "running") is None:
                time.sleep(0.1)
            assert fake.call(api.annotation, "running") == "enabled", agent.log.read_text()
            assert has_rules(running.path)
            def taints() -> object:
                return fake.call(lambda: api.get("nodes", f"node-{NODE}"))["spec"]["taints"]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(taints()) != 1:  # type: ignore[arg-type]
                time.sleep(0.1)
            assert taints() == [{"key": "keep/me", "effect": "NoSchedule"}], \
                agent.log.read_text()
            # A CNI ADD goes through the same labels: captured in "mesh", not in "default".
            r = cni("ADD", agent.socket, new.path, "sandbox-new", [new.ip4], namespace="mesh",
                    name="new")
            assert r.code == 0 and json.loads(r.stdout), r.stdout + r.stderr
            assert has_rules(new.path)
            r = cni("ADD", agent.socket, plain.path, "sandbox-plain", [plain.ip4],
                    name="plain")
            assert r.code == 0, r.stdout + r.stderr
            assert not has_rules(plain.path)
            r = cni("ADD", agent.socket, plain.path, "sandbox-x", [plain.ip4], name="unknown")
            assert r.code != 0 and "not yet seen" in r.error["msg"]  # fails closed
            pods = {p["name"]: p for p in agent.pods()}
            assert set(pods) == {"running", "new"}
            assert pods["running"]["netns"] == running.path
        finally:
            agent.stop()
