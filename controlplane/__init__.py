"""meshnode standalone control plane (arrives with the control-plane issue)."""
