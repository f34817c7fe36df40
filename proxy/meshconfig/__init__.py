"""The proxy's side of the agent's mesh config channel: routing table, policies, certs."""
