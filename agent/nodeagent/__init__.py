"""Pod enrollment driven by the CNI plugin (and the Kubernetes pod source): reconcile and
drift repair.

  pods.py       pod records, their state machine and the persisted store
  enroll.py     enroll / release / check / gc / reconcile / drift (blocking; worker threads)
  deps.py       what the Enroller is given: redirect engine, netns lookups, hand-off
  backend.py    the configured capture backend, prepared at start-up, with its fallback
  request.py    the plugin's request, typed and checked once where it enters
  errors.py     typed refusals with their CNI code (and whether to retry); the Reply
  deadline.py   the plugin's ADD budget on the agent's monotonic clock
  cniserver.py  the plugin's unix socket (asyncio), peer-checked with SO_PEERCRED
  handoff.py    the hand-off of enrolled pods to the proxy (over agent/zds)
  netnsfind.py  find a known pod's netns again and verify it holds the pod's IP
  http.py       /healthz, /readyz, /metrics, /debug/pods
  metrics.py    Prometheus metrics

The daemon that wires enrollment to the pod source and the mesh channel is agent/server.py.
"""
