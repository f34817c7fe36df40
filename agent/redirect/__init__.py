"""In-pod traffic redirection: the spec, its renderers and the backends that apply it.

Layout, one job per file:
  spec.py              what a pod's redirection must be (typed, validated)
  profile.py           chain/table names: our own, or istio-cni's
  iptables_rules.py    spec -> iptables-restore payload (pure)
  nftables_rules.py    spec -> nft script (pure)
  hostprobe.py         the host-netns kubelet probe SNAT rule (pure)
  netns.py             enter a netns on the current thread
  run.py               run a tool, turning failures into RedirectError
  routes.py            the fwmark ip rule and local route, via netlink
  iptables_backend.py  apply / read / diff / remove with iptables-restore
  nftables_backend.py  the same with nft
  backend.py           backend selection and the shared result types
"""
