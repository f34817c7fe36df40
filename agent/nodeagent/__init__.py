"""The node agent: pod enrollment driven by the CNI plugin, reconcile and drift repair.

  pods.py       pod records, their state machine and the persisted store
  enroll.py     enroll / release / check / gc / reconcile / drift (blocking; worker threads)
  cniserver.py  the plugin's unix socket (asyncio), peer-checked with SO_PEERCRED
  http.py       /healthz, /readyz, /metrics, /debug/pods
  metrics.py    Prometheus metrics
  server.py     wires it together: `meshnode agent`
"""
