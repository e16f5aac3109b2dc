"""Triton Inference Server client behind the InferenceBackend interface.

`LLNM_TRITON_URL` picks the protocol: `http://host:8000` (or https://) uses tritonclient.http,
`grpc://host:8001` uses tritonclient.grpc. Input datatypes and output names come from the server's
model metadata (so the caller passes the same numpy arrays as to ONNX Runtime). Errors that mean "the
server is not there right now" raise `InferenceUnavailable` (a ConnectionError, so the worker retries
the study); a model the server does not have raises `ModelNotFound` (a configuration fault).

Provenance: before each inference the worker reads the model's config from Triton and compares the
sha256 it declares (parameter `llnm_sha256`, llnm.inference.provenance) with its own copy of the model
file. A missing or different declaration raises `ModelMismatch` and nothing runs; `model_version` (what
results record) is the served, checked hash. The config request and the inference go over the same
client (one per thread, one connection), so with several Triton pods behind a Service (a rollout) they
reach the same pod.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from llnm.inference import provenance
from llnm.inference.backend import ModelMismatch, ModelNotFound
from llnm.observability import metrics
from llnm.observability.logs import get_logger

log = get_logger(__name__)

#: errors of the connection itself (refused, reset, closed mid-answer, timed out): retry on a new client
_CONNECTION_ERRORS = (OSError, TimeoutError, http.client.HTTPException)
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
        if isinstance(exc, _CONNECTION_ERRORS):
            return InferenceUnavailable(f"Triton at {self.url} unreachable: {type(exc).__name__}")
        return exc

    def _failed(self, model: str, exc: Exception) -> Exception:
        """`_translate`, after dropping this thread's client when the connection itself broke (the next
        call reconnects)."""
        if isinstance(exc, _CONNECTION_ERRORS):
            self._local.client = None
        return self._translate(model, exc)

    def _deadline(self) -> dict[str, float]:
        """The per-call deadline of every gRPC call (the HTTP client has its network timeout): a Triton
        that accepts a call and never answers must not hold a worker for ever."""
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    def _model_metadata(self, model: str) -> dict[str, Any]:
        with self._lock:
            cached = self._metadata.get(model)
        if cached is not None:
            return cached
        client = self._client()
        try:
            if self.protocol == "grpc":
                meta = client.get_model_metadata(model, as_json=True, **self._deadline())
            else:
                meta = client.get_model_metadata(model)
        except Exception as exc:
            raise self._failed(model, exc) from exc
        with self._lock:
            self._metadata[model] = meta
        return meta

    def _served_config(self, model: str) -> dict[str, Any]:
        """The model's configuration as Triton serves it now (never cached: another pod may answer next)."""
        client = self._client()
        try:
            if self.protocol == "grpc":
                return client.get_model_config(model, as_json=True, **self._deadline())
            return client.get_model_config(model)
        except Exception as exc:
            raise self._failed(model, exc) from exc

    def served_sha256(self, model: str) -> str:
        """The sha256 Triton's config of `model` declares, once it equals this worker's own model file
        (LLNM_MODEL_REPOSITORY; with no local copy, whatever Triton declares). Raises ModelMismatch when
        Triton declares none or another one."""
        served = provenance.declared_in_config(self._served_config(model))
        expected, source = provenance.expected_sha256(self.model_repository, model)
        if served is not None and (expected is None or served == expected):
            return served
        metrics.TRITON_MODEL_MISMATCHES.labels(model=model).inc()
        short = provenance.SHORT
        log.error("triton serves another model than this worker's; refusing it", model=model,
                  served_sha256=(served or "none")[:short], expected_sha256=(expected or "none")[:short])
        if served is None:
            raise ModelMismatch(
                f"Triton at {self.url} serves {model!r} without a declared {provenance.PARAMETER} in its "
                f"config.pbtxt, so which model it runs is unknown; refusing it. Run `llnm model-hashes --write` "
                f"on the model repository Triton serves and reload it")
        raise ModelMismatch(
            f"Triton at {self.url} serves {model!r} with sha256 {served[:short]}, but this worker's model is "
            f"{expected[:short]} ({source}); refusing to run it. Serve the model repository the workers carry "
            f"(or give the workers Triton's: LLNM_MODEL_REPOSITORY); `llnm model-hashes --check` on both")

    # -- InferenceBackend ---------------------------------------------------------------------------------
    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tritonclient.utils import triton_to_np_dtype

        self.served_sha256(model)  # refuses a model other than this worker's before anything runs
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
            result = self._client().infer(model, request_inputs, outputs=outputs, **self._deadline())
        except Exception as exc:
            metrics.TRITON_ERRORS.labels(model=model).inc()
            raise self._failed(model, exc) from exc
        finally:
            metrics.TRITON_SECONDS.labels(model=model).observe(time.perf_counter() - start)
        return {n: result.as_numpy(n) for n in names}

    def has_model(self, model: str) -> bool:
        """Is `model` ready on Triton? Raises InferenceUnavailable when Triton cannot say now (unreachable,
        restarting, timing out): the study is retried, never run as if the model were absent (a report
        left out because the text encoder's readiness call failed once)."""
        try:
            client = self._client()
            if client.is_model_ready(model, **self._deadline()):
                return True
            server_ready = client.is_server_ready(**self._deadline())  # a 503 for every path says "not now"
        except Exception as exc:
            failure = self._failed(model, exc)
            if isinstance(failure, InferenceUnavailable):
                raise failure from exc
            return False
        if not server_ready:
            raise InferenceUnavailable(f"Triton at {self.url} is not ready (starting, or behind a proxy that "
                                       f"answers for it) to say whether it serves {model!r}")
        return False

    def model_version(self, model: str) -> str:
        """The short sha256 of the model Triton serves, checked against this worker's own file (so the same
        value the ONNX Runtime backend reports for the same file); asked again for every study."""
        return self.served_sha256(model)[:provenance.SHORT]
