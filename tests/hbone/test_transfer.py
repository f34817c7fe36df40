"""Bytes through the tunnel: intact, both directions, with half-close, resets and flow control."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from typing import Any

import pytest

from proxy.hbone.h2link import STREAM_WINDOW
from tests.hbone.conftest import Mesh, echo
from tests.hbone.pki import CA

BIG = 64 << 20


def _payload(seed: bytes, size: int) -> bytes:
    """Non-repeating at any block boundary, so a dropped, duplicated or reordered frame
    changes the hash."""
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    out = bytearray()
    i = 0
    while len(out) < size:
        out += struct.pack(">Q", i) + block[8:]
        i += 1
    return bytes(out[:size])


def test_64mib_both_ways_at_once(ca: CA, run: Any) -> None:
    up, down = _payload(b"up", BIG), _payload(b"down", BIG)
    got_up: asyncio.Future[str]

    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        async def send() -> None:
            for i in range(0, len(down), 1 << 20):
                w.write(down[i:i + (1 << 20)])
                await w.drain()
            w.write_eof()
        sender = asyncio.create_task(send())
        h = hashlib.sha256()
        while data := await r.read(1 << 20):
            h.update(data)
        got_up.set_result(h.hexdigest())
        await sender
        w.close()

    async def body() -> None:
        nonlocal got_up
        got_up = asyncio.get_running_loop().create_future()
        mesh = await Mesh(ca, app).start()
        try:
            r, w = await mesh.connect()

            async def send() -> None:
                for i in range(0, len(up), 1 << 20):
                    w.write(up[i:i + (1 << 20)])
                    await w.drain()
                w.write_eof()
            sender = asyncio.create_task(send())
            h, n = hashlib.sha256(), 0
            while data := await r.read(1 << 20):
                h.update(data)
                n += len(data)
            await sender
            w.close()
            assert n == BIG
            assert h.hexdigest() == hashlib.sha256(down).hexdigest()
            assert await got_up == hashlib.sha256(up).hexdigest()
            await asyncio.sleep(0.05)
            assert mesh.inbound[0].traffic.a_to_b == BIG  # client -> app
            assert mesh.inbound[0].traffic.b_to_a == BIG
            assert not mesh.inbound[0].traffic.reset
        finally:
            await mesh.stop()
    run(body(), 45)


def test_client_half_close(ca: CA, run: Any) -> None:
    """The client shuts down its write side; the app sees EOF, and only then answers."""
    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()  # until EOF: would hang forever if END_STREAM were lost
        w.write(b"got %d bytes" % len(data))
        await w.drain()
        w.close()

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        try:
            r, w = await mesh.connect()
            w.write(b"x" * 100_000)
            w.write_eof()
            assert await asyncio.wait_for(r.read(), 5) == b"got 100000 bytes"
            w.close()
        finally:
            await mesh.stop()
    run(body())


def test_server_half_close(ca: CA, run: Any) -> None:
    """The app shuts down its write side first; the client sees EOF and can still send."""
    late: asyncio.Future[bytes]

    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"bye")
        w.write_eof()
        late.set_result(await r.read())
        w.close()

    async def body() -> None:
        nonlocal late
        late = asyncio.get_running_loop().create_future()
        mesh = await Mesh(ca, app).start()
        try:
            r, w = await mesh.connect()
            assert await asyncio.wait_for(r.read(), 5) == b"bye"  # EOF after it
            w.write(b"still talking")
            w.write_eof()
            assert await asyncio.wait_for(late, 5) == b"still talking"
            w.close()
        finally:
            await mesh.stop()
        assert not mesh.inbound[0].traffic.reset
    run(body())


def _rst(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


def test_app_reset_reaches_client_as_reset(ca: CA, run: Any) -> None:
    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(5)
        _rst(w)

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        try:
            r, w = await mesh.connect()
            w.write(b"hello")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(), 5)  # a FIN would read b"" instead
            w.close()
            await asyncio.sleep(0.05)
            assert mesh.inbound[0].traffic.reset
        finally:
            await mesh.stop()
    run(body())


def test_client_reset_reaches_app_as_reset(ca: CA, run: Any) -> None:
    seen: asyncio.Future[BaseException | bytes]

    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"ready")
        try:
            seen.set_result(await r.read())
        except ConnectionResetError as exc:
            seen.set_result(exc)
        w.close()

    async def body() -> None:
        nonlocal seen
        seen = asyncio.get_running_loop().create_future()
        mesh = await Mesh(ca, app).start()
        try:
            r, w = await mesh.connect()
            assert await r.readexactly(5) == b"ready"
            _rst(w)
            assert isinstance(await asyncio.wait_for(seen, 5), ConnectionResetError)
        finally:
            await mesh.stop()
    run(body())


def test_tunnel_loss_resets_the_app_connections(ca: CA, run: Any) -> None:
    async def body() -> None:
        mesh = await Mesh(ca, echo).start()
        try:
            r, w = await mesh.connect()
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            for link in list(mesh.server.links):
                link.abort()  # the TLS connection dies under the stream
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(), 5)
            w.close()
        finally:
            await mesh.stop()
    run(body())


def test_slow_app_backpressures_the_sender(ca: CA, run: Any) -> None:
    """While the app reads nothing, the server buffers at most one stream window: DATA is
    acknowledged only once written to the app."""
    release = asyncio.Event()
    digest: asyncio.Future[str]
    data = _payload(b"slow", 32 << 20)

    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await release.wait()
        h = hashlib.sha256()
        while chunk := await r.read(1 << 20):
            h.update(chunk)
        digest.set_result(h.hexdigest())
        w.close()

    async def body() -> None:
        nonlocal digest
        digest = asyncio.get_running_loop().create_future()
        mesh = await Mesh(ca, app).start()
        try:
            _r, w = await mesh.connect()
            w.write(data)
            w.write_eof()
            await asyncio.sleep(0.5)
            links = list(mesh.server.links)
            buffered = sum(len(c) for lk in links for s in lk.streams.values()
                           for c, _ in s._chunks)
            assert 0 < buffered <= STREAM_WINDOW
            assert w.transport.get_write_buffer_size() > 0  # the sender really is held back
            release.set()
            assert await asyncio.wait_for(digest, 20) == hashlib.sha256(data).hexdigest()
            w.close()
        finally:
            await mesh.stop()
    run(body())


def test_many_concurrent_streams(ca: CA, run: Any) -> None:
    """150 connections at once: every one intact, and pooled (at most 100 streams per TLS
    connection, so exactly two connections)."""
    async def one(mesh: Mesh, i: int) -> None:
        r, w = await mesh.connect()
        msg = _payload(b"%d" % i, (64 << 10) + i)
        w.write(msg)
        got = await r.readexactly(len(msg))
        assert got == msg
        w.write_eof()
        assert await r.read() == b""
        w.close()

    async def body() -> None:
        mesh = await Mesh(ca, echo).start()
        try:
            gate = asyncio.Event()

            async def held(i: int) -> None:
                r, w = await mesh.connect()
                w.write(b"x")
                await r.readexactly(1)
                await gate.wait()  # keep 150 streams open at the same time
                await one(mesh, i)
                w.close()
            tasks = [asyncio.create_task(held(i)) for i in range(150)]
            for _ in range(200):
                if sum(len(lk.streams) for lk in mesh.server.links) >= 150:
                    break
                await asyncio.sleep(0.02)
            assert len(mesh.server.links) == 2
            gate.set()
            await asyncio.gather(*tasks)
        finally:
            await mesh.stop()
        assert not mesh.outbound_errors
    run(body())
