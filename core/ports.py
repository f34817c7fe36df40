"""The ports and packet marks that the agent's redirection and the proxy's listeners must
agree on (Istio ambient's defaults, so meshnode can drive a real ztunnel:
docs/compatibility.md)."""

from __future__ import annotations

# Ambient's defaults, so meshnode can drive a real ztunnel (docs/compatibility.md).
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
TUNNEL_PORT = 15008
DNS_PORT = 15053
ADMIN_PORT = 15000       # the proxy's admin endpoints (ztunnel's), on localhost
AGENT_HTTP_PORT = 15021  # the agent's /healthz /readyz /metrics (ztunnel's readiness port)
# The metrics listeners Prometheus scrapes (core/stats.py), apart from the local admin ones:
# the proxy's is ztunnel's stats port; the agent's is the next one Istio does not use (15014,
# istio-cni's, is the control plane's here, and it can share the agent's node).
PROXY_STATS_PORT = 15020
AGENT_STATS_PORT = 15022
PROXY_MARK = 0x539
MARK_MASK = 0xFFF
CONNMARK = 0x111
# The proxy's inbound sockets that connect to the app from the client's address carry this
# bit on top of the proxy mark (outside MARK_MASK, so every proxy-mark test still matches).
# With the eBPF backend there is no conntrack to restore a connmark on the app's replies:
# the pod's tcp_fwmark_accept copies the SYN's mark to the app's socket instead, and an
# `ip rule fwmark TRANSPARENT_MARK/TRANSPARENT_MARK` routes those replies back to the proxy.
TRANSPARENT_MARK = 0x1000
