"""Discovery client tests: pure logic, plus protocol tests over real TLS gRPC on localhost."""
