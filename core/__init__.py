"""Shared by the agent, the proxy and the control plane; imports none of them.

  netns.py       enter a network namespace on this thread; a netns's addresses
  sysctl.py      per-netns sysctls through $MESHNODE_PROC
  bpf.py         the bpf(2) commands bcc has no Python API for; the pin dir, SO_NETNS_COOKIE
  ports.py       the capture ports and packet marks (15001/15006/15008/15053, 0x539, ...)
  config.py      YAML files onto typed dataclasses (`load_yaml`, `ConfigError`)
  monitoring.py  /healthz, /readyz, /metrics for the agent and the control plane
  wire/          the two agent -> proxy codecs, each used by both of its ends: ZDS, mesh.sock

Allowed imports: the standard library, third-party libraries and `meshpb`.
"""
