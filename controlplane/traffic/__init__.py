"""L4 traffic management: Istio's VirtualService (tcp, tls), DestinationRule and Sidecar ->
the records of core/mesh/traffic.py, served as meshnode.traffic.v1 types over Delta ADS.

- hosts.py: host names -> service keys (short names, wildcards, the registry of services);
- fields.py: durations, percentages and the other value types the kinds share;
- destinationrule.py, virtualservice.py, sidecar.py: one object each -> its records, with
  Istio's validation (istio/istio pkg/config/validation) and its error wording;
- labels.py: which label keys the rules read, and the WorkloadLabels they make;
- index.py: all of it, kept current as objects and services change; the last good version
  of a refused object stays in force; the mesh-wide outboundTrafficPolicy (MeshConfig's,
  Options.outbound_traffic_policy) applies where no root-namespace Sidecar says one.

Auto-allocated VIPs of ServiceEntry hosts are the ambient index's (the Service's addresses,
controlplane/ambient/autoallocate.py), not a traffic record.
"""
