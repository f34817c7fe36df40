"""meshnode node agent: pod enrollment, redirection backends, CLI."""
