"""Identity tests: CSRs, and CreateCertificate against a real TLS gRPC CA on localhost."""
