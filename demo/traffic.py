"""The demo's four connections, made by the pods' own processes (busybox wget run with
`ctr task exec`), so what the proxies see is real pod traffic through the CNI-installed
redirection, not a socket the demo opened on a pod's behalf."""

from __future__ import annotations

from dataclasses import dataclass

from demo.containerd import Containerd
from demo.mesh import SERVER_PORT, VIP, pod
from demo.topology import OUTSIDE_IP


@dataclass
class Flow:
    what: str
    src: str            # pod name
    url: str
    expect_ok: bool
    ok: bool = False
    detail: str = ""
    bytes: int = 0

    @property
    def as_expected(self) -> bool:
        return self.ok == self.expect_ok


def flows() -> list[Flow]:
    backend = pod("backend").ip
    return [
        Flow("pod -> service (VIP, HBONE across nodes)", "frontend",
             f"http://{VIP}:80/data", True),
        Flow("pod -> pod across nodes (HBONE/mTLS)", "frontend",
             f"http://{backend}:{SERVER_PORT}/data", True),
        Flow("pod -> service, denied by policy", "batch", f"http://{VIP}:80/data", False),
        Flow("pod -> non-mesh host (plain passthrough)", "frontend",
             f"http://{OUTSIDE_IP}:{SERVER_PORT}/data", True),
    ]


def send(runtimes: dict[str, Containerd], flow: Flow) -> Flow:
    """An HTTP/1.0 GET with busybox nc (Debian's static busybox wget segfaults before it
    sends anything); the server closes after the response, so nc ends on its own."""
    rt = runtimes[pod(flow.src).node]
    host, _, path = flow.url.removeprefix("http://").partition("/")
    ip, _, port = host.partition(":")
    p = rt.exec(flow.src, ["sh", "-c", f'printf "GET /{path} HTTP/1.0\\r\\n\\r\\n" | '
                                       f"nc -w 5 {ip} {port}"])
    head = p.stdout.split("\r\n", 1)[0]
    flow.ok = head.startswith("HTTP/1.") and " 200 " in head
    flow.bytes = len(p.stdout)
    if not flow.ok:
        flow.detail = head or (p.stderr.strip().splitlines() or ["no response"])[-1]
    return flow
