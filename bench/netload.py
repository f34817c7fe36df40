"""Tiny load tools for the proxy benchmark: an accept/echo/close server and a client that
counts completed connections per second. Run as separate processes inside a netns."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import uvloop


async def serve(port: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read(1024)
        w.write(data)
        await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def connect_rate(ip: str, port: int, seconds: float, workers: int = 8) -> float:
    loop = asyncio.get_running_loop()
    done = failed = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            await loop.sock_connect(s, (ip, port))
            await loop.sock_sendall(s, b"x")
            if await loop.sock_recv(s, 16) != b"x":
                raise ConnectionError("no echo")
        finally:
            s.close()

    async def worker() -> None:
        nonlocal done, failed
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(one(), 5)
                done += 1
            except (OSError, TimeoutError):
                failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    if failed:
        print(f"failed {failed}", file=sys.stderr)
    return done / (time.monotonic() - t0)


def connect_latency(ip: str, port: int, n: int) -> list[float]:
    """n sequential blocking connect() calls: the time of the call itself, in µs (the
    handshake, and whatever redirection costs on its path)."""
    out = []
    for _ in range(n):
        s = socket.socket()
        t0 = time.perf_counter()
        s.connect((ip, port))
        out.append((time.perf_counter() - t0) * 1e6)
        s.close()
    return out


if __name__ == "__main__":
    if sys.argv[1] == "latency":
        samples = sorted(connect_latency(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
        print(samples[len(samples) // 2], samples[int(len(samples) * 0.99)])
        sys.exit(0)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        if sys.argv[1] == "serve":
            r.run(serve(int(sys.argv[2])))
        else:
            print(r.run(connect_rate(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))
