"""Generated from proto/istio/*.proto by `make proto`; Istio-compatible messages."""
