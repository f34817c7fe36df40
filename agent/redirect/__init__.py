"""In-pod traffic redirection: the spec, its renderers and the backends that apply it.

Layout, one job per file:
  spec.py              what a pod's redirection must be (typed, validated); its port and
                       mark defaults come from core/ports.py; the capture options
                       (CaptureOptions: config keys, per-pod overrides, CLI flags) and the
                       Backend / IptablesFlavour / Profile enums
  profile.py           chain/table names: our own, or istio-cni's
  iptables_rules.py    spec -> iptables-restore payload (pure), with the host probe rule
  nftables_rules.py    spec -> nft script (pure)
  run.py               run a tool, turning failures into RedirectError
  routes.py            the fwmark ip rule and local route, via netlink
  rules.py             the live view of our rules and the drift between two views
  iptables_backend.py  apply / read / diff / remove with iptables-restore
  nftables_backend.py  the same with nft
  ebpf/                the eBPF backend (bcc loader, pinned maps and links)
  backend.py           the backend interface (RuleBackend: prepare, apply, read, remove,
                       expected, close), make_backend, and the entry points that enter the
                       netns (apply / read / diff / remove)
  errors.py            RedirectError (one pod, one step), BackendUnavailable (prepare)

The three backends are peers behind RuleBackend; a backend is made from explicit settings
and owns its state (the eBPF one its loader), so its maker (the agent's config, the CLI)
decides where it pins and attaches.

Entering a pod's netns is core/netns.py (the proxy needs it too).
"""
