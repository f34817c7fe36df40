"""The node agent's configuration: a YAML file mapped onto typed dataclasses.

Unknown keys and wrong types are errors that name the key, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.redirect.spec import Backend, Profile, RedirectSpec
from core.config import ConfigError, check_address, check_socket_path, load_yaml, prefixed


@dataclass
class CaptureConfig:
    """Redirect options for every pod (the plugin entry's `capture` can narrow them)."""

    backend: str = "iptables"
    # With backend ebpf: the backend to use instead when the eBPF programs cannot be loaded
    # (no BTF or cgroup v2, no headers, a verifier rejection). "" = refuse to start.
    fallback: str = ""
    iptables_flavour: str = "auto"
    profile: str = "meshnode"
    # true: dual stack; false: IPv4 only (IPv6 passes untouched); "auto": per pod, dual
    # stack when the pod has an IPv6 address (agent/nodeagent/ipfamily.py)
    ipv6: bool | str = "auto"
    dns_capture: bool = True
    inbound_capture: bool = True
    virtual_interfaces: list[str] = field(default_factory=list)
    exclude_outbound_cidrs: list[str] = field(default_factory=list)
    exclude_inbound_ports: list[int] = field(default_factory=list)
    exclude_outbound_ports: list[int] = field(default_factory=list)

    def spec(self) -> RedirectSpec:
        return RedirectSpec(
            profile=Profile(self.profile), ipv6=self.ipv6 is True,
            dns_capture=self.dns_capture,
            inbound_capture=self.inbound_capture,
            virtual_interfaces=tuple(self.virtual_interfaces),
            exclude_outbound_cidrs=tuple(self.exclude_outbound_cidrs),
            exclude_inbound_ports=tuple(self.exclude_inbound_ports),
            exclude_outbound_ports=tuple(self.exclude_outbound_ports))


@dataclass
class SelectionConfig:
    """Which pods are captured. `all`: every pod on the network; `namespaces`: only those."""

    mode: str = "all"
    namespaces: list[str] = field(default_factory=list)
    exclude_namespaces: list[str] = field(default_factory=lambda: ["kube-system"])

    def captures(self, namespace: str) -> bool:
        if namespace in self.exclude_namespaces:
            return False
        return self.mode == "all" or namespace in self.namespaces


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
    token: str = ""                     # the node token inline (written 0600 to state_dir)
    token_file: str = ""                # ...or a file holding it (read on every connect)
    node_name: str = ""                 # default: $NODE_NAME, else the hostname
    trust_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
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
    cni_socket: str = "/var/run/meshnode/cni.sock"
    zds_socket: str = "/var/run/meshnode/zds.sock"  # the node proxy connects here
    # Enrollment completes only when the node proxy acks the pod. Off: rules only (a node
    # whose proxy does not speak ZDS); pods then stay `redirected`.
    proxy_handoff: bool = True
    proxy_ack_timeout_seconds: float = 5.0
    state_dir: str = "/var/run/meshnode"
    http_address: str = "127.0.0.1:15021"  # /healthz, /readyz, /metrics, /debug/pods
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
        if self.capture.backend not in [b.value for b in Backend]:
            raise ConfigError(f"capture.backend: {self.capture.backend!r} is not one of "
                              f"{[b.value for b in Backend]}")
        if self.capture.fallback and (self.capture.fallback not in [b.value for b in Backend]
                                      or self.capture.fallback == "ebpf"):
            raise ConfigError(f"capture.fallback: {self.capture.fallback!r} must be iptables "
                              "or nftables (or empty)")
        if self.capture.iptables_flavour not in ("auto", "nft", "legacy"):
            raise ConfigError("capture.iptables_flavour: must be auto, nft or legacy")
        if not isinstance(self.capture.ipv6, bool) and self.capture.ipv6 != "auto":
            raise ConfigError("capture.ipv6: must be true, false or auto")
        if self.selection.mode not in ("all", "namespaces"):
            raise ConfigError("selection.mode: must be all or namespaces")
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
        check_address("http_address", self.http_address)
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


