"""In-pod traffic redirection: the spec, its renderers and the backends that apply it.

Layout, one job per file:
  spec.py              what a pod's redirection must be (typed, validated); its port and
                       mark defaults come from core/ports.py
  profile.py           chain/table names: our own, or istio-cni's
  iptables_rules.py    spec -> iptables-restore payload (pure), with the host probe rule
  nftables_rules.py    spec -> nft script (pure)
  run.py               run a tool, turning failures into RedirectError
  routes.py            the fwmark ip rule and local route, via netlink
  rules.py             the live view of our rules and the drift between two views
  iptables_backend.py  apply / read / diff / remove with iptables-restore
  nftables_backend.py  the same with nft
  ebpf/                the eBPF backend (bcc loader, pinned maps and links)
  backend.py           backend selection and the shared entry points

Entering a pod's netns is core/netns.py (the proxy needs it too).
"""
