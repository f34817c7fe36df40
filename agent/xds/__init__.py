"""The agent's discovery client: Delta ADS from the control plane into an in-memory state.

  channel.py  the TLS gRPC channel to the control plane (shared with agent/identity)
  client.py   the Delta ADS stream: requests, ACK/NACK (core/mesh/frompb.py converts),
              reconnect with backoff
  state.py    the state the client fills (core/mesh records), with change subscriptions
  node.py     the node metadata sent to the control plane

The object the daemon uses (discovery + certificates) is agent/meshconfig/meshclient.py.
"""
