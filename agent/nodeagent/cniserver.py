"""The plugin's unix socket: one newline-delimited JSON request, one reply (see
docs/cni-protocol.md). Mode 0600, and the peer must be root (SO_PEERCRED): whoever can talk
to this socket can have rules written into any netns.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

import structlog

from agent.nodeagent import metrics
from agent.nodeagent.deadline import Deadline
from agent.nodeagent.enroll import Enroller
from agent.nodeagent.errors import (
    CniError,
    InvalidConfig,
    InvalidEnvironment,
    PluginNotAvailable,
    Reply,
    TryAgain,
)
from agent.nodeagent.request import CniRequest, Command
from core.aio import peer_credentials

log = structlog.get_logger("cniserver")
MAX_REQUEST = 1 << 20
READ_TIMEOUT = 10.0


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
        raw: dict[str, Any] = {}
        # The plugin's ADD budget counts from here (monotonic: see deadline.py).
        started = time.monotonic()
        try:
            sock = writer.get_extra_info("socket")
            if peer_credentials(sock).uid != 0:
                raise InvalidEnvironment("permission denied: only root may talk to the "
                                         "meshnode agent")
            raw = await self._read(reader)
            cmd = str(raw.get("cmd", "?"))
            # Parsed and checked once, here: enrollment sees typed fields only.
            reply = await self._dispatch(CniRequest.parse(raw), started)
        except CniError as err:
            reply = Reply.failed(err)
        except TimeoutError:
            reply = Reply.failed(TryAgain("request not received in time"))
        except Exception as exc:  # never let one request take the agent down
            log.exception("request_failed", cmd=cmd)
            reply = Reply.failed(TryAgain(f"internal error: {type(exc).__name__}: {exc}"))
        # The reply first: the plugin (and the pod's sandbox) waits for it, not for our
        # bookkeeping. `ms` is the time until the reply was handed to the socket.
        try:
            writer.write((json.dumps(reply.to_json()) + "\n").encode())
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the plugin gave up (timeout): enrollment state is already consistent
        ms = round((time.monotonic() - started) * 1e3, 2)
        metrics.PLUGIN_REQUESTS.labels(cmd, "ok" if reply.ok else "error").inc()
        # The plugin's activity, in the agent's log (the plugin itself logs to the runtime).
        pod = raw.get("pod")
        pod = pod if isinstance(pod, dict) else {}
        log.info("plugin_request", cmd=cmd, container=raw.get("container_id", ""),
                 pod=f"{pod.get('namespace', '')}/{pod.get('name', '')}", ok=reply.ok,
                 detail=reply.detail, ms=ms)
        try:
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def _read(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            req = json.loads(line)
        except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
            raise InvalidConfig(f"malformed request: {exc}") from None
        except RecursionError:
            # Nesting deeper than json.loads can follow: refused like any other bad request
            # rather than logged as an internal error with a traceback.
            raise InvalidConfig("malformed request: nested too deeply") from None
        if not isinstance(req, dict):
            raise InvalidConfig("malformed request: not a JSON object")
        return req

    async def _dispatch(self, req: CniRequest, started: float) -> Reply:
        run = asyncio.get_running_loop().run_in_executor
        e = self.enroller
        if req.command is Command.STATUS:
            return self._status()
        if req.command is Command.ADD:
            return await run(None, e.add, req, Deadline.after(req.deadline_ms, started))
        if req.command is Command.DEL:
            return await run(None, e.delete, req.container_id)
        if req.command is Command.CHECK:
            return await run(None, e.check, req)
        return await run(None, e.gc, req.attachments)

    def _status(self) -> Reply:
        """CNI STATUS: can an ADD succeed now? Not without a proxy that takes pods (every
        ADD would fail), so the runtime holds new pods instead of failing them one by one."""
        if not self.ready():
            raise PluginNotAvailable("meshnode agent is not ready")
        if self.enroller.cfg.proxy_handoff:
            handoff = self.enroller.handoff
            if handoff is None or not handoff.ready():
                raise PluginNotAvailable("no node proxy is connected and synced: new pods "
                                         "cannot be handed over")
        return Reply(ok=True, detail="ready")
