"""The Kubernetes and Istio objects the control plane learns the mesh from.

  objects.py  the kinds it reads (group, version, plural) and the object store both sources
              fill: a manifests directory (`--config`) or the API server (`--kubeconfig`)
  manifests.py  `--config PATH`: files read as `kubectl apply -f` reads them, watched
  validate.py   objects against Kubernetes' OpenAPI and Istio's CRD schemas (schemas/)
  informer.py   `--kubeconfig FILE` / in-cluster: list and watch of every kind
  tokenreview.py  the CA's check of service-account tokens (TokenReview, the bound pod)
"""
