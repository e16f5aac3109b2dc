"""Model execution behind one interface: in-process ONNX Runtime (embedded default) or Triton."""

from llnm.inference.backend import InferenceBackend, ModelNotFound, create_backend

__all__ = ["InferenceBackend", "ModelNotFound", "create_backend"]
