"""Kubernetes and Istio objects -> the mesh model (core/mesh/model.py), as istiod's ambient
index converts them for ztunnel (istio/istio pilot/pkg/serviceregistry/ambient, formerly
pilot/pkg/serviceregistry/kube/controller/ambient; read at commit 86c9f01fd735). Facts were
taken from istiod's sources and tests, no code. The mapping, and what is not converted, is in
docs/control-plane.md ("Kubernetes and Istio objects -> workload API").

  options.py    what no object says: cluster id, root/system namespace, domain suffix, ...
  read.py       typed reading of plain-dict objects; `Bad` names the field and the reason
  labels.py     what labels and annotations mean: enrollment, tunnel, canonical names, locality
  services.py   Service, ServiceEntry -> Service; one served service per hostname/namespace
  autoallocate.py  VIPs for ServiceEntry hosts without addresses (stateless, 240.240.0.0/16)
  workloads.py  Pod, WorkloadEntry, ServiceEntry endpoints, EndpointSlice -> Workload
  policies.py   AuthorizationPolicy -> Policy
  peerauth.py   PeerAuthentication -> the static STRICT policy and per-workload DENY policies
  index.py      the incremental index over the ObjectStore (deltas), and `build` (full)
"""

from controlplane.ambient.index import Delta, Index, MeshState, build
from controlplane.ambient.options import Options

__all__ = ["Delta", "Index", "MeshState", "Options", "build"]
