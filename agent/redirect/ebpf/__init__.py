"""eBPF redirection (bcc): cgroup connect/sendmsg/recvmsg/getsockopt/getpeername programs and
sockops on the cgroup v2 root, sk_lookup per pod netns; a peer of the netfilter backends.

  loader.py   compile bpf/redirect.c, attach through pinned bpf links, pin maps; pod entries
  backend.py  the redirect backend on top of the loader; prepare() loads and attaches the
              programs before the first pod (BackendUnavailable if this host cannot)

The raw bpf(2) calls, the pin dir and SO_NETNS_COOKIE are core/bpf.py (the proxy uses them).
"""

from agent.redirect.ebpf.backend import EbpfBackend
from agent.redirect.ebpf.loader import Loader, LoadError, PodOpts, netns_cookie
from core.bpf import DEFAULT_PIN_DIR

__all__ = ["DEFAULT_PIN_DIR", "EbpfBackend", "LoadError", "Loader", "PodOpts", "netns_cookie"]
