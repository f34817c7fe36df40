"""The node agent's configuration: a YAML file mapped onto typed dataclasses.

Unknown keys and wrong types are errors that name the key, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.install.config import DEFAULT_AGENT_SOCKET
from agent.redirect.ebpf.loader import default_cgroup
from agent.redirect.spec import (
    AUTO,
    Backend,
    CaptureOptions,
    IptablesFlavour,
    Profile,
    RedirectSpec,
)
from core.bpf import default_pin_dir
from core.config import (
    ChoiceEnum,
    ConfigError,
    check_address,
    check_socket_path,
    load_yaml,
    prefixed,
)
from core.mesh.model import DEFAULT_CLUSTER
from core.ports import AGENT_HTTP_PORT, AGENT_STATS_PORT
from core.wire import zds


class Fallback(ChoiceEnum):
    """`capture.fallback`: with backend ebpf, the backend to use instead when the eBPF
    programs cannot be loaded (no BTF or cgroup v2, no headers, a verifier rejection)."""

    NONE = ""  # refuse to start
    IPTABLES = "iptables"
    NFTABLES = "nftables"

    @classmethod
    def _missing_(cls, value: object) -> Fallback:
        raise ValueError(f"{value!r} must be iptables or nftables (or empty)")


@dataclass
class CaptureConfig(CaptureOptions):
    """The capture options for every pod (the plugin entry's `capture` can narrow them; their
    keys are CaptureOptions' fields, agent/redirect/spec.py) and the backend that applies
    them. Enums are read from and written as their strings."""

    backend: Backend = Backend.IPTABLES
    fallback: Fallback = Fallback.NONE
    iptables_flavour: IptablesFlavour = IptablesFlavour.AUTO
    profile: Profile = Profile.MESHNODE

    def __post_init__(self) -> None:
        # Built in code (tests, the harnesses) with plain strings: the same enums.
        self.backend = Backend(self.backend)
        self.fallback = Fallback(self.fallback)
        self.iptables_flavour = IptablesFlavour(self.iptables_flavour)
        self.profile = Profile(self.profile)

    def spec(self, base: RedirectSpec | None = None) -> RedirectSpec:
        return super().spec(base or RedirectSpec(profile=self.profile))

    def bpf_pin_dir(self) -> str:
        """The eBPF backend's pin dir: $MESHNODE_BPF_PIN_DIR, else /sys/fs/bpf/meshnode."""
        return default_pin_dir()

    def bpf_cgroup(self) -> str:
        """The cgroup v2 root the eBPF programs attach to: $MESHNODE_BPF_CGROUP, else "" (the
        loader finds it from mountinfo)."""
        return default_cgroup()


class SelectionMode(ChoiceEnum):
    ALL = "all"
    NAMESPACES = "namespaces"

    @classmethod
    def _missing_(cls, value: object) -> SelectionMode:
        raise ValueError("must be all or namespaces")


@dataclass
class SelectionConfig:
    """Which pods are captured. `all`: every pod on the network; `namespaces`: only those."""

    mode: SelectionMode = SelectionMode.ALL
    namespaces: list[str] = field(default_factory=list)
    exclude_namespaces: list[str] = field(default_factory=lambda: ["kube-system"])

    def captures(self, namespace: str) -> bool:
        if namespace in self.exclude_namespaces:
            return False
        return self.mode is SelectionMode.ALL or namespace in self.namespaces

    def __post_init__(self) -> None:
        self.mode = SelectionMode(self.mode)


@dataclass
class InstallSection:
    enabled: bool = False  # off by default on a dev machine: never edit /etc/cni unasked
    cni_bin_dir: str = "/opt/cni/bin"
    cni_net_dir: str = "/etc/cni/net.d"


@dataclass
class ControlPlaneSection:
    """Where the control plane is (docs/xds-client.md). Absent from the file = no control
    plane: the agent only captures, as before, and the proxy passes traffic through."""

    address: str = ""                   # host:port of Delta ADS (and the CA)
    ca_address: str = ""                # default: address
    root_cert: str = ""                 # PEM that verifies the control plane's server cert
    server_name: str = ""               # SAN to expect when dialling an IP not in the cert
    # The bearer credential of discovery and the CA: a meshnode node token, or a projected
    # service-account token (audience istio-ca) that meshnode's control plane (API-server
    # source) or istiod checks by TokenReview.
    token: str = ""                     # the token inline (written 0600 to state_dir)
    token_file: str = ""                # ...or a file holding it (read on every connect)
    # A different credential for the CA only (e.g. the projected token,
    # /var/run/secrets/tokens/istio-token, for an istiod at ca_address), read anew for every
    # certificate request (the kubelet rotates it). Default: the one above.
    ca_token_file: str = ""
    node_name: str = ""                 # default: $NODE_NAME, else the hostname
    trust_domain: str = "cluster.local"
    cluster_id: str = DEFAULT_CLUSTER
    cert_ttl_seconds: int = 86400
    ready_timeout_seconds: float = 0.0  # >0: wait this long for xDS before serving CNI


@dataclass
class KubernetesSection:
    """The Kubernetes pod source (agent/k8s): watch this node's pods and the namespaces,
    enroll by `meshnode.io/dataplane-mode` labels, annotate pods, untaint the node. Off: pods
    come from the CNI plugin alone, selected by `selection`."""

    enabled: bool = False
    node_name: str = ""                 # default: $NODE_NAME (the DaemonSet's downward API)
    kubeconfig: str = ""                # "" = in-cluster service account
    watch_timeout_seconds: int = 300    # the server ends each watch after this; we resume
    retry_seconds: float = 1.0          # first retry of a pod that could not be enrolled

    def node(self) -> str:
        return self.node_name or os.environ.get("NODE_NAME", "")


@dataclass
class AgentConfig:
    cni_socket: str = DEFAULT_AGENT_SOCKET
    zds_socket: str = zds.DEFAULT_SOCKET  # the node proxy connects here
    # Enrollment completes only when the node proxy acks the pod. Off: rules only (a node
    # whose proxy does not speak ZDS); pods then stay `redirected`.
    proxy_handoff: bool = True
    proxy_ack_timeout_seconds: float = 5.0
    state_dir: str = "/var/run/meshnode"
    http_address: str = f"127.0.0.1:{AGENT_HTTP_PORT}"  # /healthz /readyz /metrics /debug/pods
    # The metrics listener Prometheus scrapes: /metrics and /readyz only (core/stats.py);
    # "" = off. The debug HTTP above stays on loopback.
    metrics_address: str = f"0.0.0.0:{AGENT_STATS_PORT}"
    drift_interval_seconds: float = 5.0
    workers: int = 4
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    install: InstallSection = field(default_factory=InstallSection)
    # Routing, policy and certificates for the node proxy (agent/meshconfig); only served
    # when `controlplane` is set.
    mesh_socket: str = "/var/run/meshnode/mesh.sock"
    controlplane: ControlPlaneSection | None = None
    kubernetes: KubernetesSection = field(default_factory=KubernetesSection)

    @property
    def pods_dir(self) -> Path:
        return Path(self.state_dir) / "pods"

    def validate(self) -> None:
        # backend, fallback, iptables_flavour, profile and selection.mode are enums: a bad
        # value was refused while reading the file (core/config.py), naming the key.
        if not isinstance(self.capture.ipv6, bool) and self.capture.ipv6 != AUTO:
            raise ConfigError("capture.ipv6: must be true, false or auto")
        if self.drift_interval_seconds <= 0:
            raise ConfigError("drift_interval_seconds: must be > 0")
        self.capture.spec()  # raises SpecError naming the option
        cp = self.controlplane
        if cp is not None:
            if not cp.address or not cp.root_cert:
                raise ConfigError("controlplane: address and root_cert are required")
            if bool(cp.token) == bool(cp.token_file):
                raise ConfigError("controlplane: set exactly one of token and token_file")
        self._validate_addresses()
        k8s = self.kubernetes
        if k8s.enabled and not k8s.node():
            raise ConfigError("kubernetes.node_name: required (or $NODE_NAME) when enabled")
        if k8s.watch_timeout_seconds <= 0 or k8s.retry_seconds <= 0:
            raise ConfigError("kubernetes: watch_timeout_seconds and retry_seconds must be > 0")

    def _validate_addresses(self) -> None:
        """Every address and socket path, before any socket is made."""
        _, http_port = check_address("http_address", self.http_address)
        if self.metrics_address:
            _, port = check_address("metrics_address", self.metrics_address, port_zero=True)
            if port == http_port:
                raise ConfigError(f"metrics_address: port {port} is http_address's")
        sockets = {"cni_socket": self.cni_socket}
        if self.proxy_handoff:
            sockets["zds_socket"] = self.zds_socket
        cp = self.controlplane
        if cp is not None:
            sockets["mesh_socket"] = self.mesh_socket
            # Dialled, so a DNS name is fine (the Service name in a cluster).
            check_address("controlplane.address", cp.address, hostname=True)
            if cp.ca_address:
                check_address("controlplane.ca_address", cp.ca_address, hostname=True)
        seen: dict[str, str] = {}
        for key, path in sockets.items():
            check_socket_path(key, path)
            if path in seen:
                # The second server would unlink the first one's socket and take its path.
                raise ConfigError(f"{key}: the same path as {seen[path]}")
            seen[path] = key


def load(path: str | None) -> AgentConfig:
    try:
        cfg = load_yaml(AgentConfig, path)
        cfg.validate()
    except ConfigError as exc:
        raise prefixed(exc) from None
    return cfg


