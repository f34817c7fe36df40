"""eBPF redirection (bcc): cgroup/connect4 + sockops + cgroup/getsockopt on the cgroup v2 root.

See bpf/redirect.c for the programs and agent/ebpf/loader.py for loading and pinning.
"""

from agent.ebpf.backend import EbpfBackend
from agent.ebpf.loader import DEFAULT_PIN_DIR, Loader, LoadError, PodOpts, netns_cookie

__all__ = ["DEFAULT_PIN_DIR", "EbpfBackend", "LoadError", "Loader", "PodOpts", "netns_cookie"]
