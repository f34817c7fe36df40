"""The agent's discovery client: Delta ADS from the control plane into an in-memory state."""
