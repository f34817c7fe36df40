"""Workload identities held by the node proxy: SPIFFE IDs and their certificates, in memory."""
