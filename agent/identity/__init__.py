"""Workload identities for the pods on this node: keys, CSRs, certificates from the CA."""
