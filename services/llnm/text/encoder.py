"""Encode reports into token states through the exported text encoder (ONNX, via the backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llnm.inference.backend import TEXT_ENCODER, InferenceBackend
from llnm.text.tokenize import ReportTokenizer


def tokenizer_path(model_repository: Path) -> Path:
    return Path(model_repository) / TEXT_ENCODER / "1" / "tokenizer.json"


def encode_reports(backend: InferenceBackend, tokenizer: ReportTokenizer,
                   texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """-> token states (B, 50, width) float32 and their mask (B, 50) float32 (0: padding / no report)."""
    tokens = tokenizer([t or "" for t in texts])
    out = backend.infer(TEXT_ENCODER, tokens)
    return out["token_states"].astype(np.float32), out["mask"].astype(np.float32)
