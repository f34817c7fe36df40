"""What an unprivileged process in a captured pod cannot do (docs/operations.md, "Security
model"), tried for real: a uid-65534 process with no capabilities, inside the pod's netns.

The capture rests on three kernel facts: setting the proxy's mark (SO_MARK) needs
CAP_NET_ADMIN or CAP_NET_RAW, IP_TRANSPARENT needs them too, and netfilter rules and bpf
objects can only be changed with CAP_NET_ADMIN / CAP_BPF. If any of these ever held for an
unprivileged process, its traffic could leave the pod uncaptured.
"""

from __future__ import annotations

import json
import subprocess

from agent.redirect import backend as engine
from agent.redirect.backend import RuleBackend
from agent.redirect.spec import RedirectSpec
from core.ports import PROXY_MARK
from proxy.origdst import original_dst
from testing.lab import Node
from tests.kernel.netutil import accepted_by, tcp_listener

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
          "--bounding-set=-all", "--no-new-privs"]

# Runs as nobody inside the pod: each probe reports the errno it met ("ok" if it worked).
PROBES = r"""
import json, socket, sys
out = {}
def probe(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = exc.errno
s = socket.socket()
probe("so_mark", lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[1])))
probe("ip_transparent", lambda: s.setsockopt(socket.SOL_IP, 19, 1))
c = socket.socket()
c.settimeout(2)
probe("connect", lambda: c.connect((sys.argv[2], 80)))
print(json.dumps(out))
"""


def as_nobody(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={ns}", *NOBODY, *argv], capture_output=True,
                          text=True, timeout=20)


def test_nobody_cannot_mark_past_the_capture(pods: tuple[Node, Node],
                                             impl: RuleBackend) -> None:
    client, server = pods
    engine.apply(client.path, RedirectSpec(), impl)
    proxy = tcp_listener(client.path, 15001, "0.0.0.0")
    app = tcp_listener(server.path, 80)
    res = as_nobody(client.path, "/usr/bin/python3", "-I", "-c", PROBES, str(PROXY_MARK),
                    server.ip4)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["so_mark"] == 1 and got["ip_transparent"] == 1  # EPERM, both
    assert got["connect"] == "ok"
    conn = accepted_by(proxy)
    assert conn is not None, "nobody's connection was not captured"
    assert original_dst(conn) == (server.ip4, 80)
    assert accepted_by(app, 0.2) is None, "nobody's connection reached the server directly"


def test_nobody_cannot_remove_the_rules(pods: tuple[Node, Node],
                                        netfilter_impl: RuleBackend) -> None:
    client, _ = pods
    spec = RedirectSpec()
    engine.apply(client.path, spec, netfilter_impl)
    for cmd in (["nft", "flush", "ruleset"], ["iptables-nft", "-t", "nat", "-F"],
                ["iptables-legacy", "-t", "nat", "-F"], ["ip", "rule", "flush"]):
        res = as_nobody(client.path, *cmd)
        assert res.returncode != 0, f"{cmd} worked as nobody"
    drift = engine.diff(client.path, spec, netfilter_impl)
    assert drift.missing == [] and drift.unexpected == []
