"""The Kubernetes pod source: watch this node's pods and all namespaces, enroll or release
pods by their labels through the same Enroller the CNI plugin drives (docs/architecture.md,
"The Kubernetes pod source")."""
