"""Shared by the agent, the proxy and the control plane; imports none of them.

  netns.py       enter a network namespace on this thread (`entered`, `inside`); its addresses
  sysctl.py      per-netns sysctls through $MESHNODE_PROC
  bpf.py         the bpf(2) commands bcc has no Python API for; the pin dir, SO_NETNS_COOKIE
  ports.py       the capture ports and packet marks (15001/15006/15008/15053, 0x539, ...),
                 the proxy's admin port and the agent's HTTP port
  addr.py        config address checks; `unmap`/`plain_ip` for IPv4-mapped peers
  spiffe.py      SPIFFE IDs: `SpiffeId`, `parse`, `parse_issuable`, from a certificate
  pem.py         PKCS#8 key and certificate PEM, public-key comparison
  backoff.py     `Backoff`: capped exponential retry delays, jittered, reset on success
  aio.py         `peer_credentials` (SO_PEERCRED), `cancel_and_wait`
  config.py      YAML files onto typed dataclasses (`load_yaml`, `ConfigError`)
  logs.py        structlog JSON logs for every daemon
  monitoring.py  /healthz, /readyz, /metrics for the agent and the control plane
  wire/          the two agent -> proxy codecs, each used by both of its ends: ZDS, mesh.sock
  mesh/          the mesh model: workload, service and policy records, protobuf -> model ->
                 protobuf, model <-> the mesh.sock JSON (agent, proxy and control plane)

Allowed imports: the standard library, third-party libraries and `meshpb`.
"""
