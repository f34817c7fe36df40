"""meshnode's control plane (docs/control-plane.md): Delta ADS (istio.workload.Address,
istio.security.Authorization) and the CA over one TLS port, node tokens, and Prometheus
metrics on a monitoring port. Its one source of the mesh:

  kube/       Kubernetes and Istio objects: manifests (`--config PATH`) or the API server
              (`--kubeconfig FILE`, in-cluster), into one object store
  ambient/    objects -> the mesh model, as istiod's ambient index, incrementally

Imports `core` and `meshpb`; never `agent`, `proxy`, `cli`, `demo` or `testing`.
"""
