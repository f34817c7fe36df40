"""The node proxy's configuration (YAML, every key optional)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config import load_yaml
from agent.redirect.spec import DNS_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_MARK, TUNNEL_PORT


@dataclass
class ProxyConfig:
    zds_socket: str = "/var/run/meshnode/zds.sock"
    # The agent's mesh config channel (agent `mesh_socket`); "" = no control plane: plain
    # passthrough only, and 15008 refuses connections.
    mesh_socket: str = ""
    admin_address: str = "127.0.0.1:15000"  # /config_dump /healthz/ready /metrics
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
    # Where the agent pins the eBPF backend's maps ("" = $MESHNODE_BPF_PIN_DIR or
    # /sys/fs/bpf/meshnode). Used only if they exist there: pods captured by eBPF need the
    # proxy to register its inbound listeners and to read DNS origins (proxy/inpod/bpf.py).
    bpf_pin_dir: str = ""

    def bpf_pins(self) -> str:
        from proxy.inpod.bpf import default_pin_dir

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


def load(path: str | None) -> ProxyConfig:
    return load_yaml(ProxyConfig, path)
