"""One interface for running the models of `model_repository/`.

The names are Triton's: a model is `model_repository/<name>/config.pbtxt` + `1/model.onnx`, and
inputs/outputs are named as in its config.pbtxt. The same code path runs in-process (ONNX Runtime)
or against a Triton server, so results do not depend on where the model runs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

#: The models the worker calls, by their Triton name.
NODULE_SEG = "nodule_seg"
THYROID_SEG = "thyroid_seg"
TEXT_ENCODER = "text_encoder"
TMDL = "tmdl"
#: rows of one TMDL request: its Triton config's max_batch_size (llnm.model.export); the pipeline splits
#: a larger study into requests of whole views (llnm.pipeline.infer_tmdl)
TMDL_MAX_BATCH = 32


class ModelNotFound(RuntimeError):
    """A model is missing from the repository (or the server); the message says how to make it (a path
    and a command, never patient data: the audit trail keeps it)."""

    audit_safe = True


class ModelMismatch(RuntimeError):
    """Triton serves a model other than the one this worker was built with (its config.pbtxt declares
    another llnm_sha256, or none): the worker refuses to use it, so no result names a model that was not
    used. The message names the model and both short hashes (never patient data: the audit keeps it).
    Retried like a transient fault: during a rollout an old Triton pod may answer for a while."""

    audit_safe = True


@runtime_checkable
class InferenceBackend(Protocol):
    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `model` on named input arrays (batch first); return every output by name."""
        ...

    def has_model(self, model: str) -> bool: ...

    def model_version(self, model: str) -> str:
        """A short content hash of the model file, recorded in every result (algorithm identity)."""
        ...


def create_backend(settings: "Settings") -> InferenceBackend:  # noqa: F821
    """The backend named by `settings.inference_backend`."""
    if settings.inference_backend == "onnxruntime":
        from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(settings.model_repository, threads=settings.ort_threads)
    if settings.inference_backend == "triton":
        from llnm.inference.triton_backend import TritonBackend

        return TritonBackend(settings.triton_url, timeout_s=settings.triton_timeout_s,
                             model_repository=settings.model_repository)
    raise ValueError(
        f"LLNM_INFERENCE_BACKEND={settings.inference_backend!r}: expected 'onnxruntime' or 'triton'"
    )
