"""The control plane process: Delta ADS and the CA on one TLS gRPC port, plus its source.

One source of the mesh, exactly one of:
- `config`: a file or directory of Kubernetes and Istio manifests (controlplane/kube), watched;
- `kubeconfig` (or `in_cluster`): the API server, listed and watched per kind.
Either fills an ObjectStore, which the ambient index (controlplane/ambient) converts into the
served resources (AmbientStore), incrementally.

One port (Istio's 15012, "XDS and CA over TLS") carries both services, as istiod does; the
server certificate is signed by the CA root, so node agents need only `root-cert.pem`. A second,
plain-HTTP port (istiod's monitoring port 15014) serves /metrics, /healthz and /readyz
(controlplane/http.py) when `metrics_address` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import gc
import ipaddress
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from aiohttp import web

from controlplane import heap, http, nodeauth, pki
from controlplane.ads import AdsService
from controlplane.ambient.index import Index
from controlplane.ambient.options import Options
from controlplane.ambientstore import AmbientStore
from controlplane.auth import DEFAULT_TRUSTED_NODE_ACCOUNTS, Authenticator
from controlplane.ca import CaConfig, CertificateService
from controlplane.kube.informer import KubeInformers
from controlplane.kube.manifests import ManifestWatcher
from controlplane.kube.objects import ObjectStore
from controlplane.kube.tokenreview import TokenReviewer
from core import addr

log = structlog.get_logger("controlplane")

DEFAULT_PORT = 15012
DEFAULT_SERVER_NAMES = ["meshnode-controlplane", "localhost", "127.0.0.1", "::1"]
DEFAULT_DRAIN_SECONDS = 5.0


class SourceError(Exception):
    """The mesh's source cannot be used (an unreadable manifests path, a bad kubeconfig, no
    service-account token)."""


@dataclass
class ControlPlaneConfig:
    # The source: exactly one of these (in_cluster: the pod's service account).
    config: Path | None = None
    kubeconfig: str | None = None
    in_cluster: bool = False
    # How objects are converted (cluster id, root namespace, domain suffix, ...); its
    # trust_domain is replaced by `trust_domain` below.
    ambient: Options = field(default_factory=Options)
    address: str = f"0.0.0.0:{DEFAULT_PORT}"
    trust_domain: str = "cluster.local"
    # Both or neither: a given root. Neither: the root in state_dir, generated on first start.
    root_cert: Path | None = None
    root_key: Path | None = None
    state_dir: Path = Path("/var/lib/meshnode/controlplane")
    token_key: Path | None = None            # default: <state_dir>/node-token.key
    # With an API-server source, Kubernetes tokens of these service accounts (namespace/name)
    # are node agents: issued the identities of the pods on their pod's node
    # (controlplane/auth.py; istiod's CA_TRUSTED_NODE_ACCOUNTS).
    trusted_node_accounts: list[str] = field(
        default_factory=lambda: list(DEFAULT_TRUSTED_NODE_ACCOUNTS))
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
    """Build with a config (raises SourceError / PkiError / ValueError on bad input), then
    `start()`."""

    def __init__(self, config: ControlPlaneConfig) -> None:
        self.config = config
        # Checked before anything is read or bound (ValueError names the key).
        _check_listen("address", config.address)
        self._metrics_at = (_check_listen("metrics_address", config.metrics_address)
                            if config.metrics_address is not None else None)
        chosen = [name for name, on in (("config", config.config is not None),
                                         ("kubeconfig", config.kubeconfig is not None),
                                         ("in_cluster", config.in_cluster)) if on]
        if len(chosen) != 1:
            raise ValueError("exactly one source: a manifests path (config) or the API "
                             f"server (kubeconfig or in-cluster); got {chosen or 'none'}")
        self.manifests: ManifestWatcher | None = None
        self.informers: KubeInformers | None = None
        if (config.root_cert is None) != (config.root_key is None):
            raise pki.PkiError("--root-cert and --root-key go together")
        if config.root_cert is not None and config.root_key is not None:
            self.root = pki.load_root(config.root_cert, config.root_key)
        else:
            self.root = pki.load_or_create_root(config.root_cert_path, config.root_key_path,
                                                config.trust_domain)
        self.token_key = nodeauth.load_or_create_key(config.token_key_path)
        self.objects = ObjectStore()
        if config.config is not None:
            self.manifests = ManifestWatcher(config.config, self.objects)
            try:
                self.manifests.load()  # bad objects are logged and skipped, not fatal
            except OSError as exc:
                raise SourceError(f"{config.config}: cannot read: "
                                  f"{exc.strerror or exc}") from None
        opts = dataclasses.replace(config.ambient, trust_domain=config.trust_domain)
        self.store = AmbientStore(Index(self.objects, opts), config.trust_domain)
        self.auth = Authenticator(self.token_key, config.trusted_node_accounts,
                                  cluster_id=config.ambient.cluster_id)
        self.ads = AdsService(self.store, self.auth)
        self.ca = CertificateService(self.root, self.store, self.auth,
                                     CaConfig(config.default_cert_ttl, config.max_cert_ttl))
        self.port = 0
        self.metrics_port = 0  # the bound monitoring port once started (0: not served)
        self._server: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._watch_task: asyncio.Task[None] | None = None

    def node_token(self, node: str) -> str:
        return nodeauth.mint(self.token_key, node)

    async def start(self) -> int:
        """Listen and start watching; returns the bound port (useful with port 0).

        An API-server source is listed whole before anything is served: a replica that
        answered with half the cluster would make a reconnecting agent remove the rest."""
        if self.manifests is None:
            await self._start_informers()
        server = grpc.aio.server(options=[
            # Big snapshots: ztunnel accepts up to 200 MiB, so should we.
            ("grpc.max_send_message_length", 200 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # Find streams whose node vanished (power loss, partition) instead of holding
            # their session state forever.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # A reconnecting agent's first request lists every resource it holds (~6 MB at
            # 100k workloads); gRPC's TCP reader grows its read buffers to fit and keeps
            # them per connection for good: ~1.5 MiB resident per node by default, ~130 KiB
            # more than an idle connection with 256 KiB, nothing more with 8 KiB (measured;
            # docs/benchmarks.md). Every other message is small (ACKs), so reading the rare
            # big one in 8 KiB pieces costs syscalls once per reconnect, not latency.
            ("grpc.experimental.tcp_max_read_buffer_size", 8 * 1024),
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
        await self._start_source()
        _settle()
        workloads, services, policies = self.store.counts
        log.info("controlplane_serving", address=self.config.address, port=self.port,
                 metrics_address=self.config.metrics_address, metrics_port=self.metrics_port,
                 trust_domain=self.config.trust_domain, root_cert=str(self.config.root_cert_path),
                 source=self._source_name(), workloads=workloads, services=services,
                 policies=policies)
        return self.port

    async def _start_source(self) -> None:
        if self.manifests is not None:
            self._watch_task = asyncio.create_task(self.manifests.run(), name="manifests-watch")
        if self._watch_task is not None:
            self._watch_task.add_done_callback(_watch_ended)

    async def _start_informers(self) -> None:
        try:
            self.informers = await KubeInformers.connect(self.config.kubeconfig or "",
                                                         self.objects)
        except Exception as exc:  # ConfigException, OSError: a bad kubeconfig or no token
            where = self.config.kubeconfig or "in-cluster service account"
            raise SourceError(f"{where}: {exc}") from None
        # Kubernetes tokens are reviewed over the same connection (controlplane/auth.py).
        self.auth.reviewer = TokenReviewer(self.informers.client)
        await self.informers.start()
        try:
            await self.informers.wait_synced()
        except BaseException:
            self.auth.reviewer = None
            await self.informers.stop()
            self.informers = None
            raise

    def _source_name(self) -> str:
        if self.manifests is not None:
            return f"config:{self.config.config}"
        return f"kubeconfig:{self.config.kubeconfig}" if self.config.kubeconfig else "in-cluster"

    def ready(self) -> bool:
        """ADS and the CA are served and the source has been read whole (what /readyz
        answers): an API-server source is ready once every kind has been listed, so a new
        replica does not serve a partial mesh (agents would remove what it lacks)."""
        if self._server is None:
            return False
        return self.informers is None or self.informers.synced()

    async def stop(self, grace: float = 0.5) -> None:
        """Stop accepting, end every ADS stream cleanly (status OK: the client reconnects,
        to us again or to another replica), give other calls (CSRs) up to `grace` seconds."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self.informers is not None:
            await self.informers.stop()
            self.informers = None
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
        # Start-up can wait on the API server (the first full list): a stop request then
        # ends the wait instead of being held until the cluster answers.
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await self.stop(0)
            log.info("controlplane_stopped")
            return
        stopping.cancel()
        starting.result()  # a start-up error propagates
        try:
            await stop.wait()
            log.info("controlplane_stopping", streams=len(self.ads.sessions),
                     drain_seconds=drain_seconds)
        finally:
            await self.stop(drain_seconds)
        log.info("controlplane_stopped")


def _settle() -> None:
    """After the source's first read: what was read lives as long as the process. Collected
    once and then frozen (gc.freeze: out of the cyclic collector's walks), so that a full
    collection during churn walks only what changed since, not every object of 100,000
    workloads (a pause of the event loop that every stream would see as push latency).
    Frozen objects are still freed when no longer referenced; only a reference cycle among
    them would stay. Then the free heap the read left is returned (controlplane/heap.py)."""
    gc.collect()
    gc.freeze()
    heap.trim()


def _check_listen(key: str, value: str) -> tuple[str, int]:
    try:
        return addr.host_port(value, port_zero=True)
    except addr.AddressError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _watch_ended(task: asyncio.Task[None]) -> None:
    # Without the watch the files' edits are silently ignored: that must be loud.
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
