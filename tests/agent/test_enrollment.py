"""The agent enrolls, checks, repairs and releases pods driven by the real plugin."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from agent.redirect import backend as engine
from agent.redirect.spec import RedirectSpec
from testing.agent_harness import AgentProc, cni
from testing.lab import Lab, Node


def in_sync(netns: str, backend: str = "nftables", flavour: str = "nft",
            **spec: object) -> bool:
    impl = engine.make_backend(backend, flavour)
    return engine.diff(netns, RedirectSpec(**spec), impl).in_sync  # type: ignore[arg-type]


def has_our_rules(netns: str) -> bool:
    impl = engine.make_backend("nftables")
    return bool(engine.read(netns, RedirectSpec(), impl).rules)


def wait_for(pred: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_add_enrolls_check_passes_del_releases(tmp_path: Path, pods: tuple[Node, Node],
                                               backend: str) -> None:
    pod, _ = pods
    agent = AgentProc(tmp_path, backend=backend).start()
    try:
        r = cni("ADD", agent.socket, pod.path, "c1", [pod.ip4])
        assert r.code == 0, r.stdout + r.stderr
        assert in_sync(pod.path, backend)
        [rec] = agent.pods()
        assert (rec["state"], rec["name"], rec["namespace"], rec["ips"]) == (
            "redirected", "web-0", "default", [pod.ip4])
        assert cni("CHECK", agent.socket, pod.path, "c1", [pod.ip4]).code == 0
        assert cni("DEL", agent.socket, pod.path, "c1", [pod.ip4]).code == 0
        assert agent.pods() == []
        assert not engine.read(pod.path, RedirectSpec(),
                               engine.make_backend(backend, "nft")).rules
        assert cni("DEL", agent.socket, pod.path, "c1", [pod.ip4]).code == 0  # idempotent
        assert agent.metric('meshnode_enrollments_total') == 1
    finally:
        agent.stop()


def test_check_fails_on_drift(tmp_path: Path, pods: tuple[Node, Node]) -> None:
    """iptables-legacy sends no change notifications and the drift loop is an hour away,
    so nothing repairs the flushed chain before CHECK looks: CHECK must see the drift."""
    pod, _ = pods
    agent = AgentProc(tmp_path, backend="iptables", flavour="legacy",
                      drift_interval=3600).start()
    try:
        assert cni("ADD", agent.socket, pod.path, "c1", [pod.ip4]).code == 0
        assert in_sync(pod.path, "iptables", flavour="legacy")
        subprocess.run(["ip", "netns", "exec", pod.name, "iptables-legacy", "-t", "nat",
                        "-F", "MESHNODE_OUTPUT"], check=True)
        bad = cni("CHECK", agent.socket, pod.path, "c1", [pod.ip4])
        assert bad.code != 0 and "drifted" in bad.error["msg"], bad.stdout
    finally:
        agent.stop()


def test_the_drift_watch_repairs_then_check_passes(agent: AgentProc,
                                                  pods: tuple[Node, Node]) -> None:
    pod, _ = pods
    assert cni("ADD", agent.socket, pod.path, "c1", [pod.ip4]).code == 0
    subprocess.run(["ip", "netns", "exec", pod.name, "nft", "flush", "chain", "inet",
                    "meshnode-nat", "meshnode-output"], check=True)
    assert wait_for(lambda: in_sync(pod.path), 5), "drift watch did not repair"
    assert cni("CHECK", agent.socket, pod.path, "c1", [pod.ip4]).code == 0
    assert agent.metric("meshnode_drift_repairs_total") >= 1


def test_agent_down_fails_closed_and_a_retry_succeeds_after_restart(
        tmp_path: Path, pods: tuple[Node, Node]) -> None:
    pod, _ = pods
    agent = AgentProc(tmp_path)
    r = cni("ADD", agent.socket, pod.path, "c1", [pod.ip4])
    assert r.code != 0 and r.error["code"] == 11 and "agent" in r.error["msg"]
    assert not has_our_rules(pod.path)
    assert cni("STATUS", agent.socket, pod.path, "c1", []).code != 0
    assert cni("DEL", agent.socket, pod.path, "c1", [pod.ip4]).code == 0  # DEL never blocks
    agent.start()
    try:
        assert cni("STATUS", agent.socket, pod.path, "c1", []).code == 0
        assert cni("ADD", agent.socket, pod.path, "c1", [pod.ip4]).code == 0
        assert in_sync(pod.path)
    finally:
        agent.stop()


def test_restart_reconciles_known_pods_and_forgets_vanished_ones(tmp_path: Path) -> None:
    agent = AgentProc(tmp_path, drift_interval=3600)  # only reconcile can repair here
    with Lab("rc") as lab:
        keep, gone = lab.node("keep"), lab.node("gone")
        other = lab.node("peer")
        lab.link(keep, other, subnet=1)
        lab.link(gone, other, subnet=2)
        agent.start()
        try:
            assert cni("ADD", agent.socket, keep.path, "keep", [keep.ip4]).code == 0
            assert cni("ADD", agent.socket, gone.path, "gone", [gone.ip4], name="b").code == 0
            agent.stop(signal.SIGKILL)  # no goodbye
            subprocess.run(["ip", "netns", "exec", keep.name, "nft", "delete", "table", "inet",
                            "meshnode-nat"], check=True)
            subprocess.run(["ip", "netns", "del", gone.name], check=True)
            lab.nodes.remove(gone)
            assert not in_sync(keep.path)
            agent.start()
            assert in_sync(keep.path), "reconcile on start did not repair the known pod"
            assert [p["container_id"] for p in agent.pods()] == ["keep"]
            assert agent.metric('meshnode_reconcile_events_total{type="forgotten"}') == 1
        finally:
            agent.stop()


def test_netns_that_no_longer_holds_the_pod_ip_is_not_trusted(tmp_path: Path) -> None:
    agent = AgentProc(tmp_path, drift_interval=3600)
    with Lab("ip") as lab:
        pod, peer = lab.node("pod"), lab.node("peer")
        lab.link(pod, peer, subnet=3)
        agent.start()
        try:
            assert cni("ADD", agent.socket, pod.path, "c1", [pod.ip4]).code == 0
            agent.stop(signal.SIGKILL)
            subprocess.run(["ip", "-n", pod.name, "addr", "flush", "dev", pod.ifname],
                           check=True)
            agent.start()
            assert agent.pods() == []
        finally:
            agent.stop()


def test_unselected_namespace_passes_through_without_rules(tmp_path: Path,
                                                           pods: tuple[Node, Node]) -> None:
    pod, _ = pods
    agent = AgentProc(tmp_path, selection={"mode": "namespaces", "namespaces": ["mesh"]})
    agent.start()
    try:
        r = cni("ADD", agent.socket, pod.path, "c1", [pod.ip4], namespace="plain")
        assert r.code == 0, r.stdout
        assert not has_our_rules(pod.path) and agent.pods() == []
        assert cni("ADD", agent.socket, pod.path, "c2", [pod.ip4], namespace="mesh").code == 0
        assert has_our_rules(pod.path)
    finally:
        agent.stop()


def test_per_pod_capture_options_and_bad_ones(agent: AgentProc,
                                             pods: tuple[Node, Node]) -> None:
    pod, _ = pods
    r = cni("ADD", agent.socket, pod.path, "c1", [pod.ip4], capture={"dns_capture": False})
    assert r.code == 0, r.stdout
    assert in_sync(pod.path, dns_capture=False)
    bad = cni("ADD", agent.socket, pod.path, "c2", [pod.ip4],
              capture={"exclude_outbound_ports": [70000]})
    assert bad.code != 0 and "exclude_outbound_ports" in bad.error["msg"]
    assert [p["container_id"] for p in agent.pods()] == ["c1"]


def test_vanished_netns_is_a_clear_error(agent: AgentProc) -> None:
    r = cni("ADD", agent.socket, "/var/run/netns/meshnode-gone", "c9", ["198.18.9.9"])
    assert r.code != 0 and "does not exist" in r.error["msg"]
    assert "Traceback" not in r.stderr and agent.pods() == []


def test_gc_releases_what_the_runtime_no_longer_has(agent: AgentProc) -> None:
    with Lab("gc") as lab:
        a, b, peer = lab.node("a"), lab.node("b"), lab.node("peer")
        lab.link(a, peer, subnet=4)
        lab.link(b, peer, subnet=5)
        assert cni("ADD", agent.socket, a.path, "ca", [a.ip4]).code == 0
        assert cni("ADD", agent.socket, b.path, "cb", [b.ip4], name="b").code == 0
        r = cni("GC", agent.socket, "", "", [], extra_conf={
            "cni.dev/valid-attachments": [{"containerID": "ca", "ifname": "eth0"}]})
        assert r.code == 0, r.stdout + r.stderr
        assert [p["container_id"] for p in agent.pods()] == ["ca"]
        assert has_our_rules(a.path) and not has_our_rules(b.path)


def test_socket_is_root_only() -> None:
    # pytest's tmp root is 0700: use a directory nobody can traverse, to reach the socket.
    workdir = Path(tempfile.mkdtemp(prefix="meshnode-sock-"))
    workdir.chmod(0o755)
    agent = AgentProc(workdir).start()
    try:
        _socket_is_root_only(agent)
    finally:
        agent.stop()
        shutil.rmtree(workdir)


def _socket_is_root_only(agent: AgentProc) -> None:
    assert os.stat(agent.socket).st_mode & 0o777 == 0o600
    os.chmod(agent.socket, 0o666)  # even if someone loosens the mode, the peer is checked
    # The agent answers a non-root peer at once and hangs up, so the child's send may hit
    # EPIPE; the answer is already in the socket either way.
    child = ("import socket,os,sys,contextlib;os.setgid(65534);os.setuid(65534)\n"
             "s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1])\n"
             "with contextlib.suppress(BrokenPipeError):\n"
             "    s.sendall(b'{\"v\":1,\"cmd\":\"STATUS\"}\\n')\n"
             "print(s.recv(4096).decode())")
    res = subprocess.run(["/usr/bin/python3", "-c", child, agent.socket], capture_output=True,
                         text=True, cwd="/", timeout=30)
    assert res.returncode == 0, res.stderr[-1000:]
    out = res.stdout
    assert '"ok": false' in out and "permission denied" in out


def test_health_and_readiness(agent: AgentProc) -> None:
    assert agent.http("/healthz")[0] == 200
    assert agent.http("/readyz")[0] == 200
    assert "meshnode_agent_ready 1.0" in agent.http("/metrics")[1]


def test_ready_only_with_a_valid_install_and_repaired_after_a_rewrite(tmp_path: Path) -> None:
    """With install on: not ready until a primary CNI config exists and is chained."""
    net_d, bin_d = tmp_path / "net.d", tmp_path / "bin"
    net_d.mkdir()
    bin_d.mkdir()
    agent = AgentProc(tmp_path, install={"enabled": True, "cni_net_dir": str(net_d),
                                         "cni_bin_dir": str(bin_d)})
    agent.start(wait_ready=False)
    try:
        assert agent.http("/readyz")[0] == 503
        primary = net_d / "10-bridge.conflist"
        bridge = ('{"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge", '
                  '"ipam": {"type": "host-local", "subnet": "198.18.200.0/24"}}]}')
        primary.write_text(bridge)
        assert wait_for(lambda: agent.http("/readyz")[0] == 200, 5)
        assert (bin_d / "meshnode-cni").exists()
        assert '"meshnode-cni"' in primary.read_text()
        primary.write_text(bridge)  # another CNI rewrites the file without us
        assert wait_for(lambda: '"meshnode-cni"' in primary.read_text(), 2), "not repaired"
    finally:
        agent.stop()
    # An agent restart is an upgrade: the plugin and our entry stay, so new pods wait.
    assert (bin_d / "meshnode-cni").exists() and '"meshnode-cni"' in primary.read_text()
