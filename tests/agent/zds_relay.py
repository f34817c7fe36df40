"""A ZDS man in the middle: a real proxy connects here, the relay connects to the agent and
passes every message on (netns fds included), holding back the acks of adds while told to.
This makes a real proxy slow to ack without a test hook in the agent or the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import deque

from core.wire import zds as wire
from meshpb import zds_pb2


class SlowAckRelay:
    def __init__(self, listen_path: str, agent_path: str) -> None:
        self.listen_path, self.agent_path = listen_path, agent_path
        self.add_ack_delay = 0.0  # seconds an add's ack is held back (0: passed at once)
        self.delayed = 0  # acks held back so far
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._listener = wire.seqpacket()
        self._listener.bind(listen_path)
        self._listener.listen(4)
        self._tasks: set[asyncio.Future[None]] = set()

    def __enter__(self) -> SlowAckRelay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._accept(), self._loop)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._listener.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            proxy, _ = await loop.sock_accept(self._listener)
            proxy.setblocking(False)
            task = asyncio.ensure_future(self._pair(proxy))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pair(self, proxy: socket.socket) -> None:
        agent = wire.seqpacket()
        kinds: deque[str] = deque()  # requests forwarded, not yet answered (acks go in order)
        try:
            await asyncio.get_running_loop().sock_connect(agent, self.agent_path)
            hello, _ = await wire.recv(proxy, zds_pb2.ZdsHello, max_fds=0)
            await wire.send(agent, hello)
            down = asyncio.ensure_future(self._down(agent, proxy, kinds))
            try:
                while True:
                    ack, _ = await wire.recv(proxy, zds_pb2.WorkloadResponse, max_fds=0)
                    if kinds.popleft() == "add" and self.add_ack_delay:
                        self.delayed += 1
                        await asyncio.sleep(self.add_ack_delay)
                    await wire.send(agent, ack)
            finally:
                down.cancel()
        except (wire.WireError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                agent.close()
                proxy.close()

    async def _down(self, agent: socket.socket, proxy: socket.socket,
                    kinds: deque[str]) -> None:
        with contextlib.suppress(wire.WireError, OSError):
            while True:
                req, fds = await wire.recv(agent, zds_pb2.WorkloadRequest, max_fds=1)
                kinds.append(str(req.WhichOneof("payload")))
                try:
                    await wire.send(proxy, req, fds)
                finally:
                    wire.close_fds(fds)
