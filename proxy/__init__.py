"""meshnode's shared node proxy (`meshnode proxy`): one process serving every pod of the node
from listeners made inside each pod's netns.

  server.py     the process: ZDS client, mesh config client, admin, drain on SIGTERM
  config.py     the proxy's YAML config
  inpod/        per pod: the ZDS hand-off, the pods' state, listeners, connections, the
                DNS proxy on 15053, the mesh path
  forward.py    the relay (splice), shared by plaintext and HBONE paths
  hbone/        HTTP/2 CONNECT over mTLS; identity/: SPIFFE certs; authz.py: L4 policy
  meshconfig/   the client of the agent's mesh.sock: routing table, policies, certs
  sockets.py    sockets made inside a netns, marked
  bpf.py        the proxy's side of the eBPF backend's pinned maps
  origdst.py    SO_ORIGINAL_DST
  admin.py, metrics.py

Imports `core` and `meshpb`; never `agent`, `controlplane`, `cli`, `demo` or `testing`.
"""
