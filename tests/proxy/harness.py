"""Run a WorkloadManager (the proxy's core) on a uvloop loop, against lab namespaces."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading

from core.netns import entered
from proxy.config import ProxyConfig
from proxy.inpod.manager import WorkloadManager
from proxy.inpod.zds_client import WorkloadInfo
from testing.lab import Node


async def enroll(mgr: WorkloadManager, node: Node, name: str) -> None:
    await mgr.add(f"uid-{name}", WorkloadInfo(name, "default", "default"),
                  os.open(node.path, os.O_RDONLY | os.O_CLOEXEC))


def cfg(**kw: object) -> ProxyConfig:
    return ProxyConfig(dns_capture=False, **kw)  # type: ignore[arg-type]


def server_in(node: Node, port: int) -> socket.socket:
    with entered(node.path):
        s = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    s.setblocking(False)
    return s


def client_in(node: Node) -> socket.socket:
    with entered(node.path):
        s = socket.socket()
    s.setblocking(False)
    return s


async def echo_once(listener: socket.socket, peers: list[str]) -> None:
    loop = asyncio.get_running_loop()
    conn, addr = await loop.sock_accept(listener)
    peers.append(addr[0].removeprefix("::ffff:"))
    conn.setblocking(False)
    with conn:
        while data := await loop.sock_recv(conn, 1 << 18):
            await loop.sock_sendall(conn, data)


async def send_and_hash(node: Node, ip: str, port: int, payload: bytes) -> str:
    """Send `payload`, half-close, read the echo to EOF; return the echo's sha256."""
    loop = asyncio.get_running_loop()
    c = client_in(node)
    await loop.sock_connect(c, (ip, port))

    async def send() -> None:
        await loop.sock_sendall(c, payload)
        c.shutdown(socket.SHUT_WR)

    h = hashlib.sha256()
    sender = asyncio.ensure_future(send())
    while data := await loop.sock_recv(c, 1 << 18):
        h.update(data)
    await sender
    c.close()
    return h.hexdigest()


async def warm_executor() -> None:
    """Start every thread of the loop's default executor and let each open its home-netns
    fd (one per thread, kept for the thread's life), so a later fd count does not see a
    thread the pool happened to add as a leak."""
    loop = asyncio.get_running_loop()
    workers = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size
    barrier = threading.Barrier(workers, timeout=10)

    def job() -> None:
        barrier.wait()  # holds each thread, so the pool must start a new one per job
        with entered("/proc/thread-self/ns/net"):
            pass

    await asyncio.gather(*(loop.run_in_executor(None, job) for _ in range(workers)))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
