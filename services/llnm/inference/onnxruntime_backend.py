"""In-process ONNX Runtime over `model_repository/<name>/1/model.onnx` (the embedded default)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from llnm.inference import provenance
from llnm.inference.backend import ModelNotFound


class OnnxRuntimeBackend:
    """Loads each model once, lazily, and keeps the session (sessions are thread-safe to run)."""

    def __init__(self, model_repository: Path, threads: int = 0) -> None:
        self.model_repository = Path(model_repository)
        self.threads = threads
        self._sessions: dict[str, object] = {}
        self._versions: dict[str, str] = {}
        self._lock = threading.Lock()

    def _path(self, model: str) -> Path:
        return self.model_repository / model / "1" / "model.onnx"

    def has_model(self, model: str) -> bool:
        return self._path(model).is_file()

    def _session(self, model: str):
        with self._lock:
            if model not in self._sessions:
                import onnxruntime as ort

                path = self._path(model)
                if not path.is_file():
                    raise ModelNotFound(
                        f"model {model!r} not found at {path}; run the set-up (make setup) or `llnm export`"
                    )
                options = ort.SessionOptions()
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                if self.threads:
                    options.intra_op_num_threads = self.threads
                    options.inter_op_num_threads = 1
                self._sessions[model] = ort.InferenceSession(
                    str(path), sess_options=options, providers=["CPUExecutionProvider"]
                )
            return self._sessions[model]

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session(model)
        wanted = {i.name for i in session.get_inputs()}
        feed = {k: v for k, v in inputs.items() if k in wanted}
        missing = wanted - feed.keys()
        if missing:
            raise ValueError(f"model {model!r} needs inputs {sorted(missing)}")
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feed)))

    def model_version(self, model: str) -> str:
        if model not in self._versions:
            path = self._path(model)
            if not path.is_file():
                raise ModelNotFound(f"model {model!r} not found at {path}")
            self._versions[model] = provenance.file_sha256(path)[:provenance.SHORT]
        return self._versions[model]
