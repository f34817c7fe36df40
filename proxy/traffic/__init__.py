"""L4 traffic management in the node proxy (issue 16): Istio's VirtualService tcp/tls routes,
DestinationRule subsets and traffic policy, Sidecar egress, decided per outbound connection.
The records are core/mesh/traffic.py's. Pure logic: no sockets, no timers; the clock and the
random source are injected, so every decision replays in a test.

  router.py     the decision path for a connection to a service: route, cluster, pool slot,
                connect with retries, close
  routes.py     the connection's facts; first matching route (TLS by SNI, then TCP); weights
  policy.py     a cluster's effective policy: DestinationRule, port-level, subset, defaults
  cluster.py    a cluster's state and the endpoint pick: subset members, ejections (panic
                threshold), retries' avoidance, locality, load balancer
  subsets.py    subset membership by workload labels
  locality.py   locality preference (the rule MeshTable applies)
  balancers.py  ROUND_ROBIN, RANDOM, LEAST_REQUEST (power of two choices)
  ringhash.py   consistent hash on the source IP
  outlier.py    outlier detection: consecutive errors, ejection, backoff, sweeps
  pool.py       connectionPool.tcp.maxConnections per cluster
  active.py     active connections per endpoint (LEAST_REQUEST's signal)
  retry.py      connect retries within the connect timeout
  egress.py     Sidecar egress hosts and outboundTrafficPolicy for any destination
  hosts.py      host name patterns ("*", "*.example.com")
  refusal.py    refusal reasons (metric label, access log) and the exception carrying one

Imports `core`; never `proxy.meshconfig` (which will import this) or `agent`/`controlplane`.
"""
