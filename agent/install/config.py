"""Configuration of the CNI install: directories, our conflist entry, watch/throttle knobs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLUGIN_TYPE = "meshnode-cni"
DEFAULT_CNI_BIN_DIR = Path("/opt/cni/bin")
DEFAULT_CNI_NET_DIR = Path("/etc/cni/net.d")
DEFAULT_AGENT_SOCKET = "/var/run/meshnode/cni.sock"
# Kept outside net.d on purpose (as istio-cni does with its kubeconfig): a write there would
# wake every other CNI's watcher on the node.
DEFAULT_STATE_FILE = Path("/var/run/meshnode/cni-install-state.json")
# The plugin as shipped: the static binary `cni/meshnode-cni`, built from cni/cmd by
# cni/build.sh (`make setup`; the image builds it into this same place).
DEFAULT_PLUGIN_SOURCE = Path(__file__).resolve().parents[2] / "cni" / PLUGIN_TYPE


@dataclass(frozen=True)
class PluginEntry:
    """Our entry in the primary conflist; keys as in docs/cni-protocol.md."""

    type: str = PLUGIN_TYPE
    name: str = PLUGIN_TYPE
    agent_socket: str = DEFAULT_AGENT_SOCKET
    timeout_seconds: int = 10
    exclude_namespaces: tuple[str, ...] = ("kube-system",)
    agent_pod_namespace: str = "meshnode-system"
    agent_pod_name_prefix: str = "meshnode-node-"
    capture: Mapping[str, Any] = field(default_factory=dict)
    log_file: str = ""
    # Further keys copied into the entry as they are (they win over the ones above).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object chained into the conflist (no `cniVersion`: the list carries it)."""
        entry: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "agent_socket": self.agent_socket,
            "timeout_seconds": self.timeout_seconds,
            "exclude_namespaces": list(self.exclude_namespaces),
            "agent_pod": {"namespace": self.agent_pod_namespace,
                          "name_prefix": self.agent_pod_name_prefix},
            "capture": dict(self.capture),
            "log_file": self.log_file,
        }
        entry.update(self.extra)
        entry.pop("cniVersion", None)
        return entry


@dataclass
class InstallConfig:
    cni_bin_dir: Path = DEFAULT_CNI_BIN_DIR
    cni_net_dir: Path = DEFAULT_CNI_NET_DIR
    plugin_source: Path = DEFAULT_PLUGIN_SOURCE
    entry: PluginEntry = field(default_factory=PluginEntry)
    # Last install/repair, for `meshnode install status` from another process. None: memory only.
    state_file: Path | None = DEFAULT_STATE_FILE
    # Wrapping a single-network `.conf` into a list. None keeps the `.conf`'s own network name
    # and cniVersion, as libcni's own up-conversion does: host-local IPAM and the runtime's
    # result cache are keyed by network name, so renaming the network under running pods
    # loses their state. istio-cni uses "k8s-pod-network" and "0.3.1" (pass those to match).
    wrap_name: str | None = None
    wrap_cni_version: str | None = None
    # Watcher: wait until the directory has been quiet this long before reconciling ...
    debounce_seconds: float = 0.05
    # ... but never longer than this after the first event (repair within 1 s).
    max_delay_seconds: float = 0.5
    # Full re-check even without events (missed events, inotify queue overflow).
    resync_seconds: float = 30.0
    # Fighting-loop guard: `throttle_burst` repairs at once, then `throttle_rate` per second.
    throttle_burst: int = 5
    throttle_rate: float = 0.2

    @property
    def plugin_type(self) -> str:
        return self.entry.type

    @property
    def binary_path(self) -> Path:
        """The runtime execs `<bin dir>/<type>`, so the binary is named after the type."""
        return self.cni_bin_dir / self.entry.type
