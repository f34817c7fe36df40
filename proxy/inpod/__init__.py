"""In-pod mode: the proxy's sockets live inside each pod's network namespace.

  zds_client.py  the ZDS hand-off from the agent (netns fds over SOCK_SEQPACKET)
  manager.py     all pods: add / delete / snapshot reconcile / drain; state logic only,
                 given a pod factory and the netns-fd calls (unit-tested with fakes)
  workload.py    one pod: its listeners and live connections (the default pod factory)
  dns.py         one pod's DNS proxy on 15053, made by workload.py
  meshpath.py    one pod's mesh path: HBONE out and in, identities, L4 policy

Sockets inside a netns are proxy/sockets.py; the eBPF maps, proxy/bpf.py.
"""
