"""The control plane process: Delta ADS and the CA on one TLS gRPC port, plus the file watch.

One port (Istio's 15012, "XDS and CA over TLS") carries both services, as istiod does; the
server certificate is signed by the CA root, so node agents need only `root-cert.pem`. A second,
plain-HTTP port (istiod's monitoring port 15014) serves /metrics, /healthz and /readyz
(controlplane/http.py) when `metrics_address` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from aiohttp import web

from controlplane import http, nodeauth, pki
from controlplane.ads import AdsService
from controlplane.ca import CaConfig, CertificateService
from controlplane.mesh import MeshError, parse
from controlplane.store import MeshStore
from controlplane.watch import MeshWatcher
from core import addr

log = structlog.get_logger("controlplane")

DEFAULT_PORT = 15012
DEFAULT_SERVER_NAMES = ["meshnode-controlplane", "localhost", "127.0.0.1", "::1"]
DEFAULT_DRAIN_SECONDS = 5.0


@dataclass
class ControlPlaneConfig:
    mesh: Path
    address: str = f"0.0.0.0:{DEFAULT_PORT}"
    trust_domain: str = "cluster.local"
    # Both or neither: a given root. Neither: the root in state_dir, generated on first start.
    root_cert: Path | None = None
    root_key: Path | None = None
    state_dir: Path = Path("/var/lib/meshnode/controlplane")
    token_key: Path | None = None            # default: <state_dir>/node-token.key
    # DNS names and IPs in the server certificate; clients verify one of them.
    server_names: list[str] = field(default_factory=lambda: list(DEFAULT_SERVER_NAMES))
    default_cert_ttl: datetime.timedelta = datetime.timedelta(hours=24)
    max_cert_ttl: datetime.timedelta = datetime.timedelta(days=7)
    # HOST:PORT of /metrics, /healthz, /readyz (port 0: any free port). None: not served; the
    # CLI's default is 127.0.0.1:15014, this one is None so that in-process control planes
    # (tests) do not compete for one fixed port.
    metrics_address: str | None = None

    @property
    def root_cert_path(self) -> Path:
        return self.root_cert or self.state_dir / "root-cert.pem"

    @property
    def root_key_path(self) -> Path:
        return self.root_key or self.state_dir / "root-key.pem"

    @property
    def token_key_path(self) -> Path:
        return self.token_key or self.state_dir / "node-token.key"


class ControlPlane:
    """Build with a config (raises MeshError / PkiError on bad input), then `start()`."""

    def __init__(self, config: ControlPlaneConfig) -> None:
        self.config = config
        # Checked before anything is read or bound (ValueError names the key).
        _check_listen("address", config.address)
        self._metrics_at = (_check_listen("metrics_address", config.metrics_address)
                            if config.metrics_address is not None else None)
        try:
            served = config.mesh.read_bytes()
        except OSError as exc:
            raise MeshError(f"{config.mesh}: cannot read: {exc.strerror}") from None
        mesh = parse(served.decode(errors="replace"), str(config.mesh))
        if (config.root_cert is None) != (config.root_key is None):
            raise pki.PkiError("--root-cert and --root-key go together")
        if config.root_cert is not None and config.root_key is not None:
            self.root = pki.load_root(config.root_cert, config.root_key)
        else:
            self.root = pki.load_or_create_root(config.root_cert_path, config.root_key_path,
                                                config.trust_domain)
        self.token_key = nodeauth.load_or_create_key(config.token_key_path)
        self.store = MeshStore(mesh, config.trust_domain)
        self.watcher = MeshWatcher(config.mesh, self.store, served)
        self.ads = AdsService(self.store, self.token_key)
        self.ca = CertificateService(self.root, self.store, self.token_key,
                                     CaConfig(config.default_cert_ttl, config.max_cert_ttl))
        self.port = 0
        self.metrics_port = 0  # the bound monitoring port once started (0: not served)
        self._server: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._watch_task: asyncio.Task[None] | None = None

    def node_token(self, node: str) -> str:
        return nodeauth.mint(self.token_key, node)

    async def start(self) -> int:
        """Listen and start watching; returns the bound port (useful with port 0)."""
        server = grpc.aio.server(options=[
            # Big snapshots: ztunnel accepts up to 200 MiB, so should we.
            ("grpc.max_send_message_length", 200 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # Find streams whose node vanished (power loss, partition) instead of holding
            # their session state forever.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ])
        server.add_generic_rpc_handlers([self.ads.handler(), self.ca.handler()])
        key_pem, chain_pem = pki.server_cert(self.root, *_split_names(self.config.server_names))
        creds = grpc.ssl_server_credentials([(key_pem, chain_pem)])
        self.port = server.add_secure_port(self.config.address, creds)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.address}")
        await server.start()
        self._server = server
        if self._metrics_at is not None:
            try:
                self._http, self.metrics_port = await http.start(self.ready, *self._metrics_at)
            except BaseException as exc:
                self._server = None
                await server.stop(0)
                if isinstance(exc, OSError):
                    raise OSError(f"cannot serve metrics on {self.config.metrics_address}: "
                                  f"{exc.strerror or exc}") from None
                raise
        self._watch_task = asyncio.create_task(self.watcher.run(), name="mesh-watch")
        self._watch_task.add_done_callback(_watch_ended)
        log.info("controlplane_serving", address=self.config.address, port=self.port,
                 metrics_address=self.config.metrics_address, metrics_port=self.metrics_port,
                 trust_domain=self.config.trust_domain, root_cert=str(self.config.root_cert_path),
                 workloads=len(self.store.mesh.workloads), services=len(self.store.mesh.services),
                 policies=len(self.store.mesh.policies))
        return self.port

    def ready(self) -> bool:
        """ADS and the CA are served (what /readyz answers)."""
        return self._server is not None

    async def stop(self, grace: float = 0.5) -> None:
        """Stop accepting, end every ADS stream cleanly (status OK: the client reconnects,
        to us again or to another replica), give other calls (CSRs) up to `grace` seconds."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self._server is not None:
            server, self._server = self._server, None  # /readyz says 503 while draining
            stopping = asyncio.ensure_future(server.stop(grace))
            await asyncio.sleep(0)  # the listener closes first: no new stream after close()
            self.store.close()
            await stopping
        if self._http is not None:
            await self._http.cleanup()
            self._http = None

    async def run(self, drain_seconds: float = DEFAULT_DRAIN_SECONDS) -> None:
        """The process: serve until SIGTERM or SIGINT, then stop gracefully (exit 0)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
            log.info("controlplane_stopping", streams=len(self.ads.sessions),
                     drain_seconds=drain_seconds)
        finally:
            await self.stop(drain_seconds)
        log.info("controlplane_stopped")


def _check_listen(key: str, value: str) -> tuple[str, int]:
    try:
        return addr.host_port(value, port_zero=True)
    except addr.AddressError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _watch_ended(task: asyncio.Task[None]) -> None:
    # Without the watch the file's edits are silently ignored: that must be loud.
    if not task.cancelled() and task.exception() is not None:
        log.error("mesh_watch_stopped", error=repr(task.exception()))


def _split_names(names: list[str]) -> tuple[list[str], list[ipaddress.IPv4Address
                                                             | ipaddress.IPv6Address]]:
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for n in names:
        try:
            ips.append(ipaddress.ip_address(n))
        except ValueError:
            dns.append(n)
    return dns, ips
