"""The plugin's unix socket: one newline-delimited JSON request, one reply (see
docs/cni-protocol.md). Mode 0600, and the peer must be root (SO_PEERCRED): whoever can talk
to this socket can have rules written into any netns.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import structlog

from agent.nodeagent import metrics
from agent.nodeagent.deadline import BudgetError, Deadline, budget_ms
from agent.nodeagent.enroll import INVALID_CONFIG, Enroller, Reply, fail

log = structlog.get_logger("cniserver")
MAX_REQUEST = 1 << 20
READ_TIMEOUT = 10.0
PLUGIN_NOT_AVAILABLE = 50  # CNI 1.1 STATUS: "plugin not available"


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class CniServer:
    def __init__(self, path: str, enroller: Enroller, ready: Callable[[], bool]) -> None:
        self.path = path
        self.enroller = enroller
        self.ready = ready
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a previous agent
        old = os.umask(0o177)  # create it 0600: no window where others could connect
        try:
            self._server = await asyncio.start_unix_server(
                self._handle, path=self.path, limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if os.path.exists(self.path):
            os.unlink(self.path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cmd = "?"
        req: dict[str, Any] | Reply = {}
        # The plugin's ADD budget counts from here (monotonic: see deadline.py).
        started = time.monotonic()
        try:
            sock = writer.get_extra_info("socket")
            if peer_uid(sock) != 0:
                reply = fail("permission denied: only root may talk to the meshnode agent", 4)
            else:
                req = await self._read(reader)
                if isinstance(req, Reply):
                    reply = req
                else:
                    cmd = str(req.get("cmd", "?"))
                    reply = await self._dispatch(cmd, req, started)
        except TimeoutError:
            reply = fail("request not received in time")
        except Exception as exc:  # never let one request take the agent down
            log.exception("request_failed", cmd=cmd)
            reply = fail(f"internal error: {type(exc).__name__}: {exc}")
        metrics.PLUGIN_REQUESTS.labels(cmd, "ok" if reply.ok else "error").inc()
        # The plugin's activity, in the agent's log (the plugin itself logs to the runtime).
        info = req if isinstance(req, dict) else {}
        pod = info.get("pod") or {}
        log.info("plugin_request", cmd=cmd, container=info.get("container_id", ""),
                 pod=f"{pod.get('namespace', '')}/{pod.get('name', '')}", ok=reply.ok,
                 detail=reply.detail, ms=round((time.monotonic() - started) * 1e3, 2))
        try:
            writer.write((json.dumps(reply.to_json()) + "\n").encode())
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass  # the plugin gave up (timeout): enrollment state is already consistent

    async def _read(self, reader: asyncio.StreamReader) -> dict[str, Any] | Reply:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            req = json.loads(line)
        except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
            return fail(f"malformed request: {exc}", INVALID_CONFIG)
        if not isinstance(req, dict):
            return fail("malformed request: not a JSON object", INVALID_CONFIG)
        return req

    async def _dispatch(self, cmd: str, req: dict[str, Any], started: float) -> Reply:
        run = asyncio.get_running_loop().run_in_executor
        e = self.enroller
        if cmd == "STATUS":
            return self._status()
        if cmd == "ADD":
            try:
                deadline = Deadline.after(budget_ms(req), started)
            except BudgetError as exc:
                return fail(f"malformed request: {exc}", INVALID_CONFIG)
            return await run(None, e.add, req, deadline)
        if cmd == "DEL":
            return await run(None, e.delete, str(req.get("container_id", "")))
        if cmd == "CHECK":
            return await run(None, e.check, req)
        if cmd == "GC":
            return await run(None, e.gc, list(req.get("attachments") or []))
        return fail(f"unknown command {cmd!r}", INVALID_CONFIG)

    def _status(self) -> Reply:
        """CNI STATUS: can an ADD succeed now? Not without a proxy that takes pods (every
        ADD would fail), so the runtime holds new pods instead of failing them one by one."""
        if not self.ready():
            return fail("meshnode agent is not ready", PLUGIN_NOT_AVAILABLE)
        if self.enroller.cfg.proxy_handoff:
            handoff = self.enroller.handoff
            if handoff is None or not handoff.ready():
                return fail("no node proxy is connected and synced: new pods cannot be "
                            "handed over", PLUGIN_NOT_AVAILABLE)
        return Reply(ok=True, detail="ready")
