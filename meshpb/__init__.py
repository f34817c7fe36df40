"""Generated protobuf modules (`make proto`); never edit by hand."""
