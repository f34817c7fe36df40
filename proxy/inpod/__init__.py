"""In-pod mode: the proxy's sockets live inside each pod's network namespace.

  zds_client.py  the ZDS hand-off from the agent (netns fds over SOCK_SEQPACKET)
  workload.py    one pod: its listeners and live connections
  meshpath.py    one pod's mesh path: HBONE out and in, identities, L4 policy
  manager.py     all pods: add / delete / snapshot reconcile

Sockets inside a netns are proxy/sockets.py; the eBPF maps, proxy/bpf.py.
"""
