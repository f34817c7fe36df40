"""Who reset a tunnelled connection (proxy/hbone/relay.py's Traffic.reset_by), on both
proxies of a real HBONE tunnel (tests/hbone/conftest.py): the outbound proxy's socket is the
client and its stream the upstream; the inbound proxy's stream is the client and its socket
the upstream app. Outlier detection counts only the upstream's own resets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

import pytest

from proxy.forward import Traffic
from tests.hbone.conftest import Mesh, echo
from tests.hbone.pki import CA


def _rst(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


async def _ended(mesh: Mesh) -> tuple[Traffic, Traffic]:
    """The (outbound, inbound) Traffic of the mesh's one connection, once both ended."""
    for _ in range(500):
        if mesh.outbound_traffic and mesh.inbound:
            return mesh.outbound_traffic[0], mesh.inbound[0].traffic
        if mesh.outbound_errors:
            raise mesh.outbound_errors[0]
        await asyncio.sleep(0.01)
    raise AssertionError("the relays did not end within 5 s")


def test_an_app_reset_is_the_upstreams_on_both_proxies(ca: CA, run: Any) -> None:
    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(5)
        _rst(w)

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        try:
            r, w = await mesh.connect()
            w.write(b"hello")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(), 5)
            w.close()
            out, inb = await _ended(mesh)
            assert (out.reset_by, out.upstream_failed) == ("upstream", True)
            assert (inb.reset_by, inb.upstream_failed) == ("upstream", True)
        finally:
            await mesh.stop()
    run(body())


def test_a_client_reset_is_the_clients_on_both_proxies(ca: CA, run: Any) -> None:
    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"ready")
        with contextlib.suppress(ConnectionResetError):
            while await r.read(4096):
                pass
        w.close()

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        try:
            r, w = await mesh.connect()
            assert await r.readexactly(5) == b"ready"
            _rst(w)
            out, inb = await _ended(mesh)
            assert (out.reset, out.reset_by, out.upstream_failed) == (True, "client", False)
            assert (inb.reset, inb.reset_by, inb.upstream_failed) == (True, "client", False)
        finally:
            await mesh.stop()
    run(body())


def test_bytes_sent_after_the_app_closed_are_not_its_failure(ca: CA, run: Any) -> None:
    """The app answers and closes; the client keeps sending, so the app's kernel resets and
    the inbound proxy resets the stream. A reset, but not the upstream failing."""
    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"bye")
        await w.drain()
        w.close()

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        try:
            r, w = await mesh.connect()
            assert await r.readexactly(3) == b"bye"
            assert await asyncio.wait_for(r.read(), 5) == b""  # the app's FIN, forwarded
            with contextlib.suppress(OSError):
                for _ in range(200):
                    w.write(b"more")
                    await w.drain()
                    await asyncio.sleep(0.01)
                    if mesh.outbound_traffic:
                        break
            out, inb = await _ended(mesh)
            assert (out.reset, out.reset_by, out.upstream_ended) == (True, "upstream", True)
            assert not out.upstream_failed
            assert (inb.reset_by, inb.upstream_ended, inb.upstream_failed) == (
                "upstream", True, False)
            w.close()
        finally:
            await mesh.stop()
    run(body())


def test_losing_the_tunnel_is_the_upstreams_for_the_outbound_proxy(ca: CA, run: Any) -> None:
    async def body() -> None:
        mesh = await Mesh(ca, echo).start()
        try:
            r, w = await mesh.connect()
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            for link in list(mesh.server.links):
                link.abort()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(), 5)
            w.close()
            out, _ = await _ended(mesh)
            assert (out.reset_by, out.upstream_failed) == ("upstream", True)
        finally:
            await mesh.stop()
    run(body())
