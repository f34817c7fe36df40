"""Outlier detection cannot be driven by a client (issue 16): a real proxy process and a real
captured pod (tests/proxy/traffic_harness.py), with an unprivileged process in the pod (uid
65534, no capabilities, as tests/mesh/test_attack.py) as the attacker.

At L4, outlierDetection's consecutive5xxErrors counts resets; only the upstream's own count.
Were a client's resets counted, any pod could eject a healthy endpoint with a few RSTs. So:
the attacker resets hundreds of its own connections to a service whose endpoints eject after
2 resets (at once, after the greeting, with data in flight), and makes upstreams that close
first answer its later bytes with RSTs; no endpoint is ejected and no 5xx streak grows. The
contrast, on the same proxy: an endpoint that resets its clients is ejected after 2."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from core.mesh.model import Port, Service, Vip
from core.mesh.traffic import (
    LoadBalancer,
    OutlierDetection,
    ServiceTraffic,
    SimpleLb,
    TrafficPolicy,
)
from core.netns import entered
from testing.mesh_procs import wait_for
from tests.proxy.traffic_harness import ECHO_VIP, ENDPOINT_IPS, Rig, echo_service, endpoint, rig

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
          "--bounding-set=-all", "--no-new-privs"]
SVC = echo_service()
PORTS = (8081, 8082, 8083)
E1, E2, E3 = (endpoint(f"e{i + 1}", ip, SVC, p)
              for i, (ip, p) in enumerate(zip(ENDPOINT_IPS, PORTS, strict=True)))
# A service whose endpoints answer and close at once (as an HTTP/1.0 server does).
BYE_VIP = "198.19.61.11"
BYE_IPS = ("198.18.61.21", "198.18.61.22", "198.18.61.23")
BYE = Service(name="bye", namespace="default", hostname="bye.default.svc.cluster.local",
              vips=(Vip("", BYE_VIP),), ports=(Port(80, 9090),))
B1, B2, B3 = (endpoint(f"b{i + 1}", ip, BYE, 9090) for i, ip in enumerate(BYE_IPS))
ATTACKS = 240  # connections per attack


def ejecting(service: str) -> ServiceTraffic:
    """outlierDetection: consecutive5xxErrors 2, any share of the endpoints, 30 s out."""
    return ServiceTraffic(service, traffic_policy=TrafficPolicy(
        LoadBalancer(SimpleLb.ROUND_ROBIN),
        outlier_detection=OutlierDetection(consecutive_5xx_errors=2,
                                           consecutive_gateway_errors=0, interval=1.0,
                                           base_ejection_time=30.0,
                                           max_ejection_percent=100)),
        destination_rule=f"{service.split('/')[0]}/od")


# Sends `name\n` and closes at once (a FIN: it read nothing, so nothing unread).
_CLOSER = r"""
import socket, sys
name, ip, port = sys.argv[1].encode() + b"\n", sys.argv[2], int(sys.argv[3])
srv = socket.create_server((ip, port), backlog=512)
print("serving", flush=True)
while True:
    c, _ = srv.accept()
    try:
        c.sendall(name)
    except OSError:
        pass
    c.close()
"""

# Sends `name\n`, waits for the client's EOF (or data), then resets the connection
# (SO_LINGER 0): a failing upstream. Waiting makes sure the connect itself succeeded (a reset
# racing the proxy's connect would be a connect failure, not this).
_RESETTER = r"""
import socket, struct, sys
name, ip, port = sys.argv[1].encode() + b"\n", sys.argv[2], int(sys.argv[3])
srv = socket.create_server((ip, port), backlog=512)
print("serving", flush=True)
while True:
    c, _ = srv.accept()
    try:
        c.settimeout(10)
        c.sendall(name)
        c.recv(1)
    except OSError:
        pass
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
"""

# Runs as nobody in pod a, stdlib only (/usr/bin/python3 -I: the venv is not nobody's).
# "reset": every connection ends with the client's own RST: at once, after the server's
# greeting, or with 256 KiB in flight. "after-close": read the greeting and the server's
# FIN, then keep sending until the connection is reset (the closed upstream's kernel
# answers with RST). Prints a count per outcome.
ATTACKER = r"""
import json, socket, struct, sys, time
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out = {}
def note(k):
    out[k] = out.get(k, 0) + 1
def line(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()
for i in range(n):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
        if mode == "reset":
            if i % 3 == 1:
                note("greeted " + line(s))
            elif i % 3 == 2:
                note("greeted " + line(s))
                s.sendall(b"x" * 262144)
        else:
            note("greeted " + line(s))
            note("eof" if s.recv(10) == b"" else "no eof")
            for _ in range(100):
                s.sendall(b"more")
                time.sleep(0.01)
            note("never reset")
    except (ConnectionResetError, BrokenPipeError):
        note("reset")
    except OSError as exc:
        note(f"error {exc}")
    finally:
        if mode == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
print(json.dumps(out))
"""


def attack(r: Rig, mode: str, vip: str, n: int = ATTACKS) -> Counter[str]:
    proc = subprocess.run(["nsenter", f"--net={r.a.path}", *NOBODY, "/usr/bin/python3", "-I",
                           "-c", ATTACKER, mode, vip, "80", str(n)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return Counter(json.loads(proc.stdout))


def clusters(r: Rig, service: str) -> list[dict[str, Any]]:
    return [c for t in r.view("traffic") if t["service"] == service for c in t["clusters"]]


def settled(r: Rig, *services: str) -> bool:
    """No connection of these services still open in the proxy (each has told outlier
    detection how it ended)."""
    return all(c["open"] == 0 for s in services for c in clusters(r, s))


@pytest.fixture
def r(tmp_path: Path) -> Iterator[Rig]:
    with rig(tmp_path) as g:
        with entered(g.e.path), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=g.e.ifname)[0]
            for ip in BYE_IPS:
                ipr.addr("add", index=idx, address=ip, prefixlen=24)
        for w, port in zip((E1, E2, E3), PORTS, strict=True):
            g.serve(w.name, w.addresses[0], port)
        for w in (B1, B2, B3):
            g.serve(w.name, w.addresses[0], 9090, script=_CLOSER)
        g.feed.apply(SVC, E1, E2, E3, BYE, B1, B2, B3, ejecting(SVC.key), ejecting(BYE.key))
        wait_for(lambda: {t["service"] for t in g.view("traffic")} >= {SVC.key, BYE.key}, 10,
                 "the outlier detection rules")
        yield g


def test_a_client_resetting_its_own_connections_ejects_no_endpoint(r: Rig) -> None:
    got = attack(r, "reset", ECHO_VIP)
    greeted = {k: v for k, v in got.items() if k.startswith("greeted ")}
    # The attack reached every endpoint: two thirds of its connections read a greeting.
    assert set(greeted) == {"greeted e1", "greeted e2", "greeted e3"}, got
    assert sum(greeted.values()) >= ATTACKS * 2 // 3 - 5, got
    closing = attack(r, "after-close", BYE_VIP, ATTACKS // 4)
    assert closing["eof"] == ATTACKS // 4 and closing["reset"] == ATTACKS // 4, closing
    wait_for(lambda: settled(r, SVC.key, BYE.key), 10, "every connection closed")

    for service in (SVC.key, BYE.key):
        for c in clusters(r, service):
            assert c["ejected"] == [], c
            streaks = {uid: h["consecutive_5xx"] for uid, h in c["outlier_detection"].items()}
            assert set(streaks.values()) == {0}, streaks
    time.sleep(2)  # two sweeps of the proxy's timer, which publishes the ejection metrics
    assert r.metric("meshnode_proxy_traffic_ejections_total") == 0
    by = Counter((e.get("service"), e.get("reset_by", "")) for e in r.proxy.access_log())
    # Every attack connection the proxy relayed was reset by the client (one reset before
    # the proxy took it is never routed, nor logged), but for the "after-close" ones: reset
    # by the upstream's kernel after its FIN, which is not the upstream failing.
    assert by[SVC.key, "client"] >= sum(greeted.values()), by
    assert by[BYE.key, "upstream"] == ATTACKS // 4, by
    assert sum(by.values()) == by[SVC.key, "client"] + by[BYE.key, "upstream"], by
    # Still served by all three, in turn.
    assert Counter(r.ask() for _ in range(30)) == {"e1": 10, "e2": 10, "e3": 10}


def test_an_endpoint_that_resets_its_clients_is_ejected(r: Rig) -> None:
    """The contrast: the same rules eject an upstream that resets, after exactly 2 resets,
    while the attacker's own resets go on beside it."""
    bad = next(s for s in r.servers if s.name == "e2")
    bad.stop()
    r.servers.remove(bad)
    r.serve("e2", E2.addresses[0], PORTS[1], script=_RESETTER)
    answers = [r.ask() for _ in range(6)]  # round robin: e2 twice
    assert sorted(answers) == ["e1", "e1", "e2", "e2", "e3", "e3"], answers
    wait_for(lambda: settled(r, SVC.key), 10, "every connection closed")
    [c] = clusters(r, SVC.key)
    assert c["ejected"] == [E2.uid], c
    # The proxy's sweep timer publishes it.
    wait_for(lambda: r.metric("meshnode_proxy_traffic_ejections_total") == 1, 3,
             "the ejection counted")
    log = [e for e in r.proxy.access_log() if e.get("reset_by") == "upstream"]
    assert len(log) == 2 and {e["dst"] for e in log} == {f"{E2.addresses[0]}:{PORTS[1]}"}, log
    got = attack(r, "reset", ECHO_VIP, 60)  # the attacker's resets change nothing
    assert "greeted e2" not in got and got["greeted e1"] + got["greeted e3"] >= 35, got
    t0 = time.monotonic()
    wait_for(lambda: settled(r, SVC.key), 10, "every connection closed")
    [c] = clusters(r, SVC.key)
    assert c["ejected"] == [E2.uid] and time.monotonic() - t0 < 30, c
    streaks = {uid: h["consecutive_5xx"] for uid, h in c["outlier_detection"].items()}
    assert streaks == {E1.uid: 0, E2.uid: 0, E3.uid: 0}, streaks
    assert Counter(r.ask() for _ in range(20)) == {"e1": 10, "e3": 10}
