"""The agent → node proxy mesh config channel (`mesh.sock`): routing, policy, certificates."""
