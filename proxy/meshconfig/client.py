"""Connects to the agent's `mesh.sock` and keeps the proxy's table and certificates current.

The agent sends a snapshot first on every connection, so reconnecting (agent restart) needs
no state here: the snapshot replaces the table. Certificates are replaced as they come;
ones the agent no longer holds are removed when it says so, or stop being used at expiry.
A message that fails to apply is logged and skipped: one bad record must not take down the
data path of every pod (the agent already validated what the control plane sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

import structlog

from core.aio import cancel_and_wait
from core.backoff import Backoff
from core.spiffe import SpiffeError, parse
from core.wire.meshconfig import WireError, read_frame
from proxy.identity.certs import CertBundle, CertStore
from proxy.meshconfig.table import MeshTable

log = structlog.get_logger("meshconfig")


class MeshConfigClient:
    def __init__(self, path: str, table: MeshTable, certs: CertStore) -> None:
        self.path = path
        self.table = table
        self.certs = certs
        self.connected = False
        self.synced = asyncio.Event()  # first snapshot applied
        self.messages = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="meshconfig")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def _run(self) -> None:
        # A node-local peer: exact doubling, as for the ZDS socket.
        backoff = Backoff(initial=0.05, cap=2.0, jitter=False)
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except OSError as exc:
                log.debug("meshconfig_connect_failed", socket=self.path, error=str(exc))
                await asyncio.sleep(backoff.next())
                continue
            self.connected = True
            backoff.reset()
            log.info("meshconfig_connected", socket=self.path)
            try:
                while (msg := await read_frame(reader)) is not None:
                    self._apply(msg)
            except (OSError, WireError, ValueError) as exc:
                log.warning("meshconfig_stream_failed", error=str(exc))
            finally:
                self.connected = False
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            log.info("meshconfig_disconnected")
            await asyncio.sleep(backoff.next())

    def _apply(self, msg: dict[str, Any]) -> None:
        self.messages += 1
        try:
            if msg["t"] == "cert":
                self._cert(msg)
            elif msg["t"] in ("snapshot", "delta"):
                self.table.apply(msg)
                if msg["t"] == "snapshot":
                    if not self.synced.is_set():
                        # The table is most of the heap and lives on: keep the collector's
                        # full passes off it, as at start-up (proxy/server.py).
                        gc.freeze()
                    self.synced.set()
                    log.info("meshconfig_snapshot", workloads=len(self.table.workloads),
                             services=len(self.table.services),
                             policies=len(self.table.policies))
            else:
                log.warning("meshconfig_unknown_message", type=msg["t"])
        except (KeyError, TypeError, ValueError, SpiffeError) as exc:
            self.errors += 1
            log.error("meshconfig_message_rejected", type=msg.get("t"),
                      error=f"{type(exc).__name__}: {exc}")

    def _cert(self, msg: dict[str, Any]) -> None:
        identity = parse(msg["identity"])
        if msg.get("removed"):
            self.certs.remove(identity)
            log.info("certificate_removed", identity=str(identity))
            return
        bundle = CertBundle.from_pem(msg["key"].encode(), msg["chain"].encode(),
                                     msg["roots"].encode())
        if bundle.identity != identity:
            raise ValueError(f"certificate is for {bundle.identity}, sent as {identity}")
        self.certs.put(bundle)  # new connections use it at once; live ones keep theirs
        log.info("certificate_updated", identity=str(identity), serial=f"{bundle.serial:x}",
                 not_after=bundle.not_after.isoformat())
