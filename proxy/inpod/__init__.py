"""In-pod mode: the proxy's sockets live inside each pod's network namespace.

  sockets.py     make sockets inside a netns (by fd), marked so the pod's rules skip them
  zds_client.py  the ZDS hand-off from the agent (netns fds over SOCK_SEQPACKET)
  workload.py    one pod: its listeners and live connections
  manager.py     all pods: add / delete / snapshot reconcile
"""
