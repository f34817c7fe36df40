"""The agent's side of `mesh.sock`: every connected node proxy gets a snapshot of the
discovery state and the certificates of this node's identities, then deltas as they come.

Keys travel only over this socket (mode 0600, peer must be root or our own uid), never to
disk. Each connection has its own unbounded queue: the state and identity subscribers run
on the event loop and must not block on a slow proxy; a proxy that falls far behind is
cut off (it reconnects and gets a fresh snapshot) rather than growing the queue forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from agent.identity.bundle import CertBundle
from agent.identity.manager import IdentityManager
from agent.xds.state import Change, XdsState
from core.aio import cancel_and_wait, peer_credentials
from core.mesh.channel import (
    encode_egress,
    encode_labels,
    encode_policy,
    encode_service,
    encode_traffic,
    encode_workload,
)
from core.mesh.model import DEFAULT_TRUST_DOMAIN, Policy, Service, Workload
from core.mesh.traffic import EgressPolicy, ServiceTraffic, WorkloadLabels
from core.wire.meshconfig import frame

log = structlog.get_logger("meshconfig")
MAX_QUEUED = 10_000  # messages; a proxy this far behind reconnects and resyncs


def snapshot(state: XdsState, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> dict[str, Any]:
    return {"t": "snapshot", "trust_domain": trust_domain,
            "workloads": [encode_workload(w) for w in state.workloads.values()],
            "services": [encode_service(s) for s in state.services.values()],
            "policies": [encode_policy(p) for p in state.policies.values()],
            "traffic": [encode_traffic(t) for t in state.traffic.values()],
            "egress": [encode_egress(e) for e in state.egress.values()],
            "labels": [encode_labels(w) for w in state.labels.values()]}


# Change.kind -> (the delta's list of upserts, its list of removed keys)
_LISTS = {"workload": ("workloads", "removed_workloads"),
          "service": ("services", "removed_services"),
          "policy": ("policies", "removed_policies"),
          "traffic": ("traffic", "removed_traffic"),
          "egress": ("egress", "removed_egress"),
          "labels": ("labels", "removed_labels")}


def _encode(rec: object) -> dict[str, Any]:
    if isinstance(rec, Workload):
        return encode_workload(rec)
    if isinstance(rec, Service):
        return encode_service(rec)
    if isinstance(rec, Policy):
        return encode_policy(rec)
    if isinstance(rec, ServiceTraffic):
        return encode_traffic(rec)
    if isinstance(rec, EgressPolicy):
        return encode_egress(rec)
    if isinstance(rec, WorkloadLabels):
        return encode_labels(rec)
    raise TypeError(f"no channel record for {type(rec).__name__}")


def delta(changes: Sequence[Change]) -> dict[str, Any]:
    """One applied discovery response as a delta. A removal is filed by its change's kind
    (a removed traffic record is not a removed policy)."""
    msg: dict[str, Any] = {"t": "delta"}
    for upserts, removed in _LISTS.values():
        msg[upserts], msg[removed] = [], []
    for c in changes:
        upserts, removed = _LISTS[c.kind]
        if c.new is not None:
            msg[upserts].append(_encode(c.new))
        else:
            msg[removed].append(c.key)
    return msg


def _cert_msg(b: CertBundle) -> dict[str, Any]:
    return {"t": "cert", "identity": b.identity, "key": b.key_pem.decode(),
            "chain": "".join(b.chain_pem), "roots": "".join(b.roots_pem)}


def _peer_allowed(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    return peer_credentials(sock).uid in (0, os.getuid())


class MeshConfigServer:
    def __init__(self, path: str, state: XdsState, identities: IdentityManager,
                 trust_domain: str = DEFAULT_TRUST_DOMAIN) -> None:
        self.path = path
        self.trust_domain = trust_domain
        self.state = state
        self.identities = identities
        self._queues: set[asyncio.Queue[bytes | None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        return len(self._queues)

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket from a previous agent
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        old = os.umask(0o177)  # born 0600: no window where another user could connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path)
        finally:
            os.umask(old)
        self._unsubscribe = [self.state.subscribe(self._on_changes),
                             self.identities.subscribe(self._on_cert)]
        log.info("meshconfig_listening", socket=self.path)

    async def close(self) -> None:
        for unsub in self._unsubscribe:
            unsub()
        for q in list(self._queues):
            q.put_nowait(None)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await cancel_and_wait(self._tasks)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # -- fan-out (runs on the loop, never blocks) --------------------------------------

    def _broadcast(self, data: bytes) -> None:
        for q in list(self._queues):
            if q.qsize() >= MAX_QUEUED:
                log.warning("meshconfig_proxy_too_slow", queued=q.qsize())
                self._queues.discard(q)
                q.put_nowait(None)
            else:
                q.put_nowait(data)

    def _on_changes(self, changes: Sequence[Change]) -> None:
        if self._queues:
            self._broadcast(frame(delta(changes)))

    def _on_cert(self, identity: str, bundle: CertBundle | None) -> None:
        if not self._queues:
            return
        self._broadcast(frame(_cert_msg(bundle) if bundle is not None else
                              {"t": "cert", "identity": identity, "removed": True}))

    # -- one proxy ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if not _peer_allowed(writer):
                log.warning("meshconfig_peer_refused")
                return
            q: asyncio.Queue[bytes | None] = asyncio.Queue()
            # Snapshot and current certificates are queued before any await, so no delta
            # can slip between them and be lost or applied out of order.
            q.put_nowait(frame(snapshot(self.state, self.trust_domain)))
            for ident in self.identities.identities():
                b = self.identities.get(ident)
                if b is not None:
                    q.put_nowait(frame(_cert_msg(b)))
            self._queues.add(q)
            log.info("meshconfig_proxy_connected", workloads=len(self.state.workloads),
                     identities=len(self.identities.identities()))
            reading = asyncio.ensure_future(reader.read())  # EOF = the proxy went away
            try:
                while (data := await q.get()) is not None:
                    writer.write(data)
                    await writer.drain()
                    if reading.done():
                        break
            finally:
                reading.cancel()
                self._queues.discard(q)
        except (ConnectionError, OSError) as exc:
            log.info("meshconfig_proxy_gone", error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)
