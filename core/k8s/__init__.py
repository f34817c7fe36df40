"""Talking to the Kubernetes API server, shared by the agent (agent/k8s) and the control plane
(controlplane/kube):

  client.py     configuration (kubeconfig or in-cluster), raw list and watch of any
                collection path, ApiError
  reflector.py  list-then-watch of one collection into a keyed cache: bookmarks, 410 relist
                and diff, backoff, bad lines skipped
  metrics.py    the `meshnode_k8s_*` watch metrics both use
"""
