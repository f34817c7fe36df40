"""The agent's discovery client: Delta ADS from the control plane into an in-memory state.

  channel.py  the TLS gRPC channel to the control plane (shared with agent/identity)
  client.py   the Delta ADS stream: requests, ACK/NACK, reconnect with backoff
  convert.py  istio.workload / istio.security protobufs -> records
  records.py  Workload, Service, Policy
  state.py    the state the client fills, with change subscriptions
  node.py     the node metadata sent to the control plane
  backoff.py  reconnect backoff

The object the daemon uses (discovery + certificates) is agent/meshconfig/meshclient.py.
"""
