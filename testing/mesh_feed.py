"""The agent's mesh config server (agent/meshconfig/server.py, the code the agent runs) on a
loop of its own, over an XdsState a test or benchmark fills directly, as the agent's xDS
client would from the control plane: a real proxy process connected to its socket routes by
exactly those records, with no control plane in the way."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from agent.identity.bundle import CertBundle
from agent.identity.manager import IdentityManager
from agent.meshconfig.server import MeshConfigServer
from agent.xds.state import Record, TrafficKind, XdsState


class NoCa:
    """No certificate authority: the fed mesh has no local pod that needs a certificate."""

    async def fetch(self, identity: str) -> CertBundle:
        raise AssertionError(f"unexpected certificate fetch for {identity}")


class Feeder:
    """The mesh config server on `path`, over `state`, on a thread's loop."""

    def __init__(self, path: str, node: str = "node1") -> None:
        self.state = XdsState(node)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = MeshConfigServer(path, self.state, IdentityManager(NoCa()))
        self._call(self.server.start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def apply(self, *records: Record,
              removed_traffic: tuple[tuple[TrafficKind, str], ...] = ()) -> None:
        async def go() -> None:
            self.state.apply(records, removed_traffic=removed_traffic)
        self._call(go())

    def close(self) -> None:
        self._call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
