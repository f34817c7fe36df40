"""Generated from proto/meshnode/*.proto by `make proto`; meshnode's own discovery types."""
