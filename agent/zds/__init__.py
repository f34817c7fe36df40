"""ZDS: the agent -> proxy hand-off of pod network namespaces, wire-compatible with
istio-cni <-> ztunnel (package istio.workload.zds).

  server.py  the agent side: snapshot on connect, adds to the newest proxy, deletes to all

The codec (one protobuf message per SOCK_SEQPACKET datagram, netns fds as SCM_RIGHTS) is
core/wire/zds.py; the proxy side is proxy/inpod/zds_client.py.
"""

from agent.zds.server import Workload, ZdsError, ZdsServer
from core.wire.zds import PeerClosed, ProtocolError, Truncated, WireError

__all__ = ["PeerClosed", "ProtocolError", "Truncated", "WireError", "Workload", "ZdsError",
           "ZdsServer"]
