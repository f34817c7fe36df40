"""Issue 12, part 1: one unprivileged process in a captured pod cannot take the node proxy
down by making it connect to itself.

    pod a (attacker, uid 65534) ─ node1 ─ node2 ─ pod b (echo)
    pod c (curl, a bystander)  ─┘

For 10 s, processes running as uid 65534 inside pod a loop `connect()` to every capture
port (15001, 15006, 15008, 15053) on 127.0.0.1, on a's own IP, and on b's IP (a mesh
workload: node1 turns those into HBONE CONNECTs whose authority names the capture port, so
node2's proxy is attacked too). Meanwhile pod c keeps calling the service on b through both
proxies. Proven: every attack connection is refused (reset or refused, never relayed,
never left hanging); both proxies' fd counts stay under 200 above idle; every one of c's
calls succeeds; both fd counts are back to idle within 2 s of the attack's end; the
refusals are counted by reason and the error logs stay within their rate limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing import mesh_manifests as k8s
from testing.lab import Lab
from testing.mesh_procs import MeshNode, certs_of, wait_for
from testing.mesh_stack import MeshStack
from testing.mesh_topology import VIP, Topology, build
from tests.mesh.apps import EchoServer, exchange, sha

CURL_ID = "spiffe://cluster.local/ns/default/sa/curl"
SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"
CAPTURE_PORTS = (15001, 15006, 15008, 15053)
ATTACK_SECONDS = 10.0
ATTACKERS = 2  # processes, each looping over every target but one (below)
FD_BOUND = 200  # above idle, during the attack
FD_SLACK = 16  # above idle, 2 s after it (pooled HBONE links, the admin's own requests)
PAYLOAD = os.urandom(8 * 1024)
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
          "--bounding-set=-all", "--no-new-privs"]

# Runs as nobody inside pod a, stdlib only (/usr/bin/python3 -I: the venv is not nobody's).
# Each connection is opened, read once and closed; the result per target is a count per
# outcome: "reset"/"refused"/"closed" (EOF) are refusals, "data" would mean the connection
# was relayed somewhere that answered, "timeout" that it was left hanging.
ATTACKER = r"""
import json, socket, sys, time
targets = json.loads(sys.argv[1])
until = time.monotonic() + float(sys.argv[2])
out = {f"{h}:{p}": {} for h, p in targets}
def note(key, what):
    out[key][what] = out[key].get(what, 0) + 1
while time.monotonic() < until:
    for host, port in targets:
        key = f"{host}:{port}"
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((host, port))
            got = s.recv(1)
            note(key, "data" if got else "closed")
        except ConnectionResetError:
            note(key, "reset")
        except ConnectionRefusedError:
            note(key, "refused")
        except (TimeoutError, socket.timeout):
            note(key, "timeout")
        except OSError as exc:
            note(key, f"errno {exc.errno}")
        finally:
            s.close()
print(json.dumps(out))
"""


def manifests(t: Topology) -> list[dict[str, Any]]:
    """sleep (a) and curl (c) on node1, echo (b) on node2 behind the service echo; the
    namespace is ambient (HBONE)."""
    assert t.c is not None
    return [*k8s.two_nodes(),
            k8s.service("echo", VIP, [(80, 8080)], selector={"app": "echo"}),
            k8s.pod("sleep", t.a.ip4, "node1", service_account="sleep",
                    labels={"app": "sleep"}),
            k8s.pod("curl", t.c.ip4, "node1", service_account="curl", labels={"app": "curl"}),
            k8s.pod("echo", t.b.ip4, "node2", service_account="echo", labels={"app": "echo"},
                    ports=[8080])]


@dataclass
class Mesh:
    t: Topology
    n1: MeshNode
    n2: MeshNode

    def call(self) -> bool:
        assert self.t.c is not None
        return exchange(self.t.c, VIP, 80, PAYLOAD) == sha(PAYLOAD)


def with_dns_capture(node: MeshNode) -> None:
    # The two-node harness turns the DNS proxy off; here 15053 must be served, so that a
    # TCP connection straight to it is one more way to make the proxy dial itself.
    cfg = yaml.safe_load(node.proxy.config.read_text())
    cfg["dns_capture"] = True
    node.proxy.config.write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp: Path = tmp_path_factory.mktemp("attack")
    with Lab("at") as lab, MeshStack(tmp) as s:
        t = build(lab, pod_c=True)
        assert t.c is not None
        cp = s.control_plane(t.cp, *manifests(t))
        n1 = s.node("node1", t.node1, cp, configure=with_dns_capture)
        n2 = s.node("node2", t.node2, cp, configure=with_dns_capture)
        s.enroll(n1, t.a, "sleep")
        s.enroll(n1, t.c, "curl")
        s.enroll(n2, t.b, "echo")
        s.keep(EchoServer(t.b, 8080))
        wait_for(lambda: {SLEEP_ID, CURL_ID} <= certs_of(n1) and ECHO_ID in certs_of(n2), 15,
                 "both proxies to hold their pods' certificates")
        yield Mesh(t, n1, n2)


def fds(node: MeshNode) -> int:
    assert node.proxy.proc is not None
    return len(os.listdir(f"/proc/{node.proxy.proc.pid}/fd"))


def idle_fds(node: MeshNode) -> int:
    """The proxy's fd count once it has settled (two equal readings in a row)."""
    last = -1
    for _ in range(40):
        now = fds(node)
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    raise AssertionError(f"{node.name}'s proxy fd count never settled (last {last})")


def start_attackers(m: Mesh) -> list[subprocess.Popen[str]]:
    t = m.t
    targets = [[host, port] for host in ("127.0.0.1", t.a.ip4, t.b.ip4)
               for port in CAPTURE_PORTS]
    groups = [targets] * ATTACKERS

    def run(group: list[list[Any]]) -> subprocess.Popen[str]:
        return subprocess.Popen(["nsenter", f"--net={t.a.path}", *NOBODY, "/usr/bin/python3",
                                 "-I", "-c", ATTACKER, json.dumps(group), str(ATTACK_SECONDS)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    return [run(g) for g in groups]


def test_self_connect_flood_is_refused_and_bounded(mesh: Mesh) -> None:
    n1, n2 = mesh.n1, mesh.n2
    assert mesh.call(), "c -> VIP -> b before the attack"
    idle = {n.name: idle_fds(n) for n in (n1, n2)}
    peak = dict(idle)
    calls: list[bool] = []
    attackers = start_attackers(mesh)
    try:
        stop = threading.Event()

        def bystander() -> None:
            while not stop.is_set():
                calls.append(mesh.call())
                time.sleep(0.05)

        traffic = threading.Thread(target=bystander)
        traffic.start()
        try:
            while any(p.poll() is None for p in attackers):
                for n in (n1, n2):
                    peak[n.name] = max(peak[n.name], fds(n))
                time.sleep(0.05)
        finally:
            stop.set()
            traffic.join()
        ended = time.monotonic()
        results = [p.communicate(timeout=10) for p in attackers]
    finally:
        for p in attackers:
            if p.poll() is None:
                p.kill()  # only our own attackers, by their Popen handle
                p.wait()
    for p, (_, err) in zip(attackers, results, strict=True):
        assert p.returncode == 0, err

    # The attack was real: every target was tried, many times, and every try was refused
    # (never relayed to something that answered, never left hanging).
    seen: dict[str, dict[str, int]] = {}
    for out, _ in results:
        for target, outcomes in json.loads(out).items():
            for what, count in outcomes.items():
                seen.setdefault(target, {}).setdefault(what, 0)
                seen[target][what] += count
    assert len(seen) == 3 * len(CAPTURE_PORTS)
    for target, outcomes in seen.items():
        assert sum(outcomes.values()) >= 5, json.dumps(seen)
        assert set(outcomes) <= {"reset", "refused", "closed"}, (target, outcomes)
    # The pod's own 15008 resets a process of the pod at once (it is not one of the
    # proxy's own tunnels): no TLS handshake is ever started for it.
    own_tunnel = seen[f"{mesh.t.a.ip4}:15008"]
    assert set(own_tunnel) == {"reset"}, own_tunnel

    # fds stayed bounded on both proxies, and the bystander never failed.
    for n in (n1, n2):
        assert peak[n.name] - idle[n.name] < FD_BOUND, (n.name, idle[n.name], peak[n.name])
    assert len(calls) >= 20 and all(calls), f"{calls.count(False)} of {len(calls)} failed"

    # Back to idle within 2 s of the attack's end.
    def settled() -> bool:
        return all(fds(n) <= idle[n.name] + FD_SLACK for n in (n1, n2))

    wait_for(settled, max(0.1, ended + 2.0 - time.monotonic()), "both proxies' fds at idle")

    # Counted by reason: node1 refused the loops to its own listeners, node2 the CONNECTs
    # naming a capture port (direction inbound), node1 its DNS proxy's self-query.
    assert n1.proxy_metric("meshnode_proxy_connections_refused_total", direction="outbound",
                           reason="loop") > 100
    assert n1.proxy_metric("meshnode_proxy_connections_refused_total", direction="dns",
                           reason="loop") > 0
    assert n2.proxy_metric("meshnode_proxy_connections_refused_total", direction="inbound",
                           reason="loop") > 0
    assert n1.proxy_metric("meshnode_proxy_connections_refused_total", direction="tunnel",
                           reason="loop") > 0
    assert n2.proxy_metric("meshnode_hbone_streams_opened_total", direction="inbound",
                           source_principal=SLEEP_ID, response_code="400") > 0
    # Logged within the per-pod budget (burst 20 + 5/s, per event), the rest counted.
    budget = 20 + 5 * (ATTACK_SECONDS + 5)
    for n in (n1, n2):
        refused_lines = n.log_events("connection_refused")
        assert 0 < len(refused_lines) <= budget, (n.name, len(refused_lines))
        failed = [e for e in n.log_events("connection") if e.get("error")]
        assert len(failed) <= 2 * budget, (n.name, len(failed))  # per pod: a and c, b
    assert n1.proxy_metric("meshnode_proxy_log_suppressed_total",
                           event="connection_refused") > 0
    assert mesh.call(), "c -> VIP -> b after the attack"


def test_pod_reaches_its_own_service_through_its_own_tunnel(mesh: Mesh) -> None:
    """The one legitimate local client of 15008: the proxy tunnelling a pod to itself (b
    calls the service it serves, its only endpoint). Refusing the pod's processes there
    must not refuse this."""
    t = mesh.t
    before = mesh.n2.proxy_metric("meshnode_hbone_streams_opened_total", direction="inbound",
                                  source_principal=ECHO_ID, response_code="200")
    for _ in range(3):
        assert exchange(t.b, VIP, 80, PAYLOAD) == sha(PAYLOAD)
    after = mesh.n2.proxy_metric("meshnode_hbone_streams_opened_total", direction="inbound",
                                 source_principal=ECHO_ID, response_code="200")
    assert after == before + 3  # through HBONE, echo -> echo, not a plaintext shortcut
