"""eBPF redirection (bcc): cgroup/connect4 + sockops + cgroup/getsockopt on the cgroup v2 root.

See bpf/redirect.c for the programs and agent/redirect/ebpf/loader.py for loading and pinning.
"""

from agent.redirect.ebpf.backend import EbpfBackend
from agent.redirect.ebpf.loader import Loader, LoadError, PodOpts, netns_cookie
from core.bpf import DEFAULT_PIN_DIR

__all__ = ["DEFAULT_PIN_DIR", "EbpfBackend", "LoadError", "Loader", "PodOpts", "netns_cookie"]
