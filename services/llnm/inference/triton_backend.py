"""Triton Inference Server client behind the InferenceBackend interface.

`LLNM_TRITON_URL` picks the protocol: `http://host:8000` (or https://) uses tritonclient.http,
`grpc://host:8001` uses tritonclient.grpc. Input datatypes and output names come from the server's
model metadata (so the caller passes the same numpy arrays as to ONNX Runtime). Errors that mean "the
server is not there right now" raise `InferenceUnavailable` (a ConnectionError, so the worker retries
the study); a model the server does not have raises `ModelNotFound` (a configuration fault).
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from llnm.inference.backend import ModelNotFound
from llnm.observability import metrics

_TRANSIENT_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED",
                   "StatusCode.ABORTED", "StatusCode.CANCELLED"}


class InferenceUnavailable(ConnectionError):
    """The Triton server could not be reached or is overloaded; the request may succeed later."""


class TritonBackend:
    def __init__(self, url: str, timeout_s: float = 30.0, model_repository: Path | None = None) -> None:
        if not url:
            raise ValueError("LLNM_TRITON_URL is empty: set http://host:8000 or grpc://host:8001")
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in {"http", "https", "grpc", "grpcs"}:
            raise ValueError(f"LLNM_TRITON_URL={url!r}: scheme must be http, https, grpc or grpcs")
        self.url = url
        self.protocol = "grpc" if parsed.scheme.startswith("grpc") else "http"
        self.secure = parsed.scheme in {"https", "grpcs"}
        default_port = 8001 if self.protocol == "grpc" else 8000
        self.address = f"{parsed.hostname}:{parsed.port or default_port}"
        self.timeout_s = timeout_s
        self.model_repository = Path(model_repository) if model_repository else None
        self._local = threading.local()  # one client per thread: the clients are not thread-safe
        self._metadata: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- clients ----------------------------------------------------------------------------------------
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                import tritonclient.grpc as grpcclient

                client = grpcclient.InferenceServerClient(url=self.address, ssl=self.secure)
            else:
                import tritonclient.http as httpclient

                client = httpclient.InferenceServerClient(
                    url=self.address, ssl=self.secure, connection_timeout=self.timeout_s,
                    network_timeout=self.timeout_s)
            self._local.client = client
        return client

    def _module(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _translate(self, model: str, exc: Exception) -> Exception:
        """Map a client error to InferenceUnavailable (retry later), ModelNotFound or RuntimeError."""
        from tritonclient.utils import InferenceServerException

        if isinstance(exc, InferenceServerException):
            status = str(exc.status() or "")
            text = str(exc.message() or exc)
            if status in _TRANSIENT_GRPC or status in {"500", "502", "503", "504"} or "unavailable" in text.lower():
                return InferenceUnavailable(f"Triton at {self.url} unavailable for {model!r}: {text[:200]}")
            if "unknown model" in text.lower() or "not found" in text.lower() or status == "StatusCode.NOT_FOUND":
                return ModelNotFound(f"Triton at {self.url} has no model {model!r}; deploy model_repository/")
            return RuntimeError(f"Triton inference of {model!r} failed: {text[:300]}")
        if isinstance(exc, (OSError, TimeoutError)):
            return InferenceUnavailable(f"Triton at {self.url} unreachable: {type(exc).__name__}")
        return exc

    def _model_metadata(self, model: str) -> dict[str, Any]:
        with self._lock:
            cached = self._metadata.get(model)
        if cached is not None:
            return cached
        client = self._client()
        try:
            if self.protocol == "grpc":
                meta = client.get_model_metadata(model, as_json=True)
            else:
                meta = client.get_model_metadata(model)
        except Exception as exc:
            raise self._translate(model, exc) from exc
        with self._lock:
            self._metadata[model] = meta
        return meta

    # -- InferenceBackend ---------------------------------------------------------------------------------
    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tritonclient.utils import triton_to_np_dtype

        meta = self._model_metadata(model)
        module = self._module()
        request_inputs = []
        for spec in meta["inputs"]:
            name = spec["name"]
            if name not in inputs:
                raise ValueError(f"model {model!r} needs input {name!r}")
            arr = np.ascontiguousarray(inputs[name], dtype=triton_to_np_dtype(spec["datatype"]))
            item = module.InferInput(name, list(arr.shape), spec["datatype"])
            if self.protocol == "http":
                item.set_data_from_numpy(arr, binary_data=True)
            else:
                item.set_data_from_numpy(arr)
            request_inputs.append(item)
        names = [o["name"] for o in meta["outputs"]]
        if self.protocol == "http":
            outputs = [module.InferRequestedOutput(n, binary_data=True) for n in names]
        else:
            outputs = [module.InferRequestedOutput(n) for n in names]
        start = time.perf_counter()
        try:
            if self.protocol == "grpc":
                result = self._client().infer(model, request_inputs, outputs=outputs, client_timeout=self.timeout_s)
            else:
                result = self._client().infer(model, request_inputs, outputs=outputs)
        except Exception as exc:
            metrics.TRITON_ERRORS.labels(model=model).inc()
            if isinstance(exc, (OSError, TimeoutError)):
                self._local.client = None  # a broken connection: reconnect on the next call
            raise self._translate(model, exc) from exc
        finally:
            metrics.TRITON_SECONDS.labels(model=model).observe(time.perf_counter() - start)
        return {n: result.as_numpy(n) for n in names}

    def has_model(self, model: str) -> bool:
        try:
            return bool(self._client().is_model_ready(model))
        except Exception:
            return False

    def model_version(self, model: str) -> str:
        """The content hash of the local model file when the repository is mounted here (the same value
        the ONNX Runtime backend reports), else Triton's name and version of the model."""
        with self._lock:
            if model in self._versions:
                return self._versions[model]
        version = None
        if self.model_repository is not None:
            path = self.model_repository / model / "1" / "model.onnx"
            if path.is_file():
                version = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        if version is None:
            meta = self._model_metadata(model)
            versions = meta.get("versions") or ["1"]
            version = f"triton:{meta.get('name', model)}:{versions[-1]}"
        with self._lock:
            self._versions[model] = version
        return version
