"""Triton Inference Server client (HTTP or gRPC) behind the InferenceBackend interface.

Filled in by the service work (issue 5)."""
