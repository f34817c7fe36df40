"""The node proxy's configuration (YAML, every key optional)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core import addr
from core.bpf import default_pin_dir
from core.config import ConfigError, check_address, check_socket_path, load_yaml, prefixed
from core.ports import (
    ADMIN_PORT,
    DNS_PORT,
    INBOUND_PORT,
    OUTBOUND_PORT,
    PROXY_MARK,
    PROXY_STATS_PORT,
    TUNNEL_PORT,
)
from core.wire import zds


@dataclass
class ProxyConfig:
    zds_socket: str = zds.DEFAULT_SOCKET
    # The agent's mesh config channel (agent `mesh_socket`); "" = no control plane: plain
    # passthrough only, and 15008 refuses connections.
    mesh_socket: str = ""
    admin_address: str = f"127.0.0.1:{ADMIN_PORT}"  # /config_dump /healthz/ready /metrics
    # The metrics listener Prometheus scrapes: /metrics and /healthz/ready only (core/stats.py),
    # ztunnel's stats port; "" = off. The admin port stays on loopback.
    metrics_address: str = f"0.0.0.0:{PROXY_STATS_PORT}"
    mark: int = PROXY_MARK
    outbound_port: int = OUTBOUND_PORT
    inbound_port: int = INBOUND_PORT
    tunnel_port: int = TUNNEL_PORT
    dns_port: int = DNS_PORT
    dns_capture: bool = True
    dns_fallback: list[str] = field(default_factory=list)
    connect_timeout_seconds: float = 5.0
    idle_timeout_seconds: float = 3600.0
    drain_seconds: float = 30.0  # on SIGTERM: stop accepting, let connections finish
    zero_copy: bool = True  # splice(2) for plaintext TCP; False copies through userspace
    preserve_source: bool = True  # inbound: connect to the app from the client's address
    # One shared process serves every pod: per-pod shares and global caps keep one pod from
    # taking all its fds (proxy/limits.py; docs/operations.md). max_connections 0 = derived
    # from the fd limit (RLIMIT_NOFILE / 6, minus a reserve).
    max_connections_per_pod: int = 1024
    max_connections: int = 0
    max_pending_connects_per_pod: int = 128
    max_pending_connects: int = 1024
    # Per pod and event: error log lines (refusals, failed connections in the access log)
    # beyond this rate are dropped and counted (proxy/ratelimit.py).
    error_log_per_second: float = 5.0
    error_log_burst: int = 20
    # Where the agent pins the eBPF backend's maps ("" = $MESHNODE_BPF_PIN_DIR or
    # /sys/fs/bpf/meshnode). Used only if they exist there: pods captured by eBPF need the
    # proxy to register its inbound listeners and to read DNS origins (proxy/bpf.py).
    bpf_pin_dir: str = ""

    def bpf_pins(self) -> str:
        return self.bpf_pin_dir or default_pin_dir()
    access_log: bool = True

    def dns_fallback_addresses(self) -> list[tuple[str, int]]:
        """`dns_fallback` entries are "ip" or "ip:port" ("[v6]:port" for IPv6)."""
        out = []
        for entry in self.dns_fallback:
            host, sep, port = entry.rpartition(":")
            if not sep or (":" in host and not host.startswith("[")):
                out.append((entry.strip("[]"), 53))
            else:
                out.append((host.strip("[]"), int(port)))
        return out


def check_addresses(cfg: ProxyConfig) -> None:
    """Every address, port and socket path, before any socket is made (ConfigError names the
    key)."""
    _, admin_port = check_address("admin_address", cfg.admin_address)
    if cfg.metrics_address:
        _, port = check_address("metrics_address", cfg.metrics_address, port_zero=True)
        if port == admin_port:
            raise ConfigError(f"metrics_address: port {port} is admin_address's")
    check_socket_path("zds_socket", cfg.zds_socket)
    if cfg.mesh_socket:
        check_socket_path("mesh_socket", cfg.mesh_socket)
    for key in ("outbound_port", "inbound_port", "tunnel_port", "dns_port"):
        try:
            addr.port(getattr(cfg, key))
        except addr.AddressError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    for i, entry in enumerate(cfg.dns_fallback):
        try:
            addr.ip_port(entry, 53)
        except addr.AddressError as exc:
            raise ConfigError(f"dns_fallback[{i}]: {exc}") from None


def check_limits(cfg: ProxyConfig) -> None:
    """The connection limits and the error-log budget (ConfigError names the key)."""
    for key in ("max_connections_per_pod", "max_pending_connects_per_pod",
                "max_pending_connects", "error_log_burst"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1")
    if cfg.max_connections < 0:
        raise ConfigError("max_connections: must be >= 0 (0: from the fd limit)")
    if cfg.error_log_per_second < 0:
        raise ConfigError("error_log_per_second: must be >= 0")


def load(path: str | None) -> ProxyConfig:
    try:
        cfg = load_yaml(ProxyConfig, path)
        check_addresses(cfg)
        check_limits(cfg)
    except ConfigError as exc:
        raise prefixed(exc) from None
    return cfg
