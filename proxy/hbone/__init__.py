"""HBONE: HTTP/2 CONNECT over mutual TLS between node proxies (port 15008).

`HboneClient` (outbound) and `HboneServer` (inbound) are building blocks: they take already
made sockets and callbacks, so network-namespace and socket-mark logic stays with the pod
proxy. See docs/hbone.md.
"""

from proxy.hbone.client import HboneClient, HboneError
from proxy.hbone.h2link import Stream, StreamReset
from proxy.hbone.server import HboneServer, InboundStream

__all__ = ["HboneClient", "HboneError", "HboneServer", "InboundStream", "Stream",
           "StreamReset"]
