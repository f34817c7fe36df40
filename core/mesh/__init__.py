"""The mesh model, one for the agent, the proxy and the control plane: a workload, a service
or a policy has one shape from the wire to routing, policy and the debug dumps.

  model.py    the records (Workload, Service, Port, Vip, Gateway, Policy, Group, Rule,
              Match, StringMatch, ServiceAccountMatch), their enums, the mesh defaults
  frompb.py   istio.workload / istio.security protobufs -> records; `ConvertError` says why not
  topb.py     records -> protobufs (the control plane); frompb(topb(r)) == r
  channel.py  records <-> the JSON records of the agent -> proxy channel, both directions
  intern.py   sharing of equal strings and tuples between records (memory per workload)
"""
