"""Inbound HBONE streams count against the destination pod's connection share (issue 12).

One mTLS connection carries any number of CONNECT streams, and each holds an upstream
socket to the app; counting accepted TCP connections alone would let one peer hold every
fd of the node proxy over a single connection. Here the server's slots are the proxy's
real Limiter with a share of 2: the third concurrent stream on the same connection is
answered 503 and never reaches the app, and closing a stream gives its slot back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from proxy.limits import Limiter
from tests.hbone.conftest import CLIENT_ID, SERVER_ID, Mesh
from tests.hbone.pki import CA

SHARE = 2
POD = "pod-b"


class Slots:
    """The server's StreamSlots over a real Limiter, recording what it refused."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.refused: list[str] = []

    def acquire(self, src: tuple[str, int], dst: tuple[str, int]) -> str | None:
        denied = self.limiter.acquire(POD)
        if denied is not None:
            self.refused.append(denied)
        return denied

    def release(self) -> None:
        self.limiter.release(POD)


class Holding:
    """The app: answers each connection once, then holds it open until told to stop."""

    def __init__(self) -> None:
        self.connections = 0
        self.stop = asyncio.Event()

    async def __call__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        w.write(await r.readexactly(4))
        await w.drain()
        await self.stop.wait()
        w.close()


def _opened(code: str) -> float:
    labels = {"direction": "inbound", "source_principal": str(CLIENT_ID),
              "destination_principal": str(SERVER_ID), "response_code": code}
    return REGISTRY.get_sample_value("meshnode_hbone_streams_opened_total", labels) or 0.0


async def _open(mesh: Mesh) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await mesh.connect()
    w.write(b"ping")
    assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
    return r, w


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(100):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("slots not released within 5 s")


def test_streams_beyond_the_pods_share_are_refused_on_one_connection(ca: CA, run: Any) -> None:
    app = Holding()

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        limiter = Limiter(per_key=SHARE, total=100)
        slots = Slots(limiter)
        mesh.server.slots = slots
        try:
            before = _opened("503")
            held = [await _open(mesh) for _ in range(SHARE)]
            assert len(mesh.server.links) == 1  # both streams on one mTLS connection
            assert limiter.held(POD) == SHARE

            r, w = await mesh.connect()
            w.write(b"ping")
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(r.readexactly(4), 5)
            w.close()
            assert slots.refused == ["pod_limit"]
            assert app.connections == SHARE  # the refused stream never reached the app
            assert _opened("503") == before + 1
            assert len(mesh.server.links) == 1  # refused the stream, not the connection

            # A stream that ends (both sides closed) gives its slot back: the next one is
            # served. The other stays half-open (the app closed, its client has not) and
            # keeps its slot.
            _, w0 = held.pop()
            w0.close()
            app.stop.set()
            await _until(lambda: limiter.held(POD) == 1)
            app.stop.clear()
            held.append(await _open(mesh))
            assert limiter.held(POD) == SHARE
            for _, w in held:
                w.close()
            app.stop.set()
            await _until(lambda: limiter.held(POD) == 0)
        finally:
            await mesh.stop()
        assert limiter.used == 0
    run(body())
