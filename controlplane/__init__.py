"""meshnode's standalone control plane (`meshnode controlplane --mesh FILE`): the mesh file,
Delta ADS (istio.workload.Address, istio.security.Authorization) and the CA over one TLS
port, node tokens, and Prometheus metrics on a monitoring port (docs/control-plane.md).

Imports `core` and `meshpb`; never `agent`, `proxy`, `cli`, `demo` or `testing`.
"""
