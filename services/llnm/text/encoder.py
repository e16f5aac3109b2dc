"""Encode reports into token states through the exported text encoder (ONNX, via the backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llnm.inference.backend import TEXT_ENCODER, InferenceBackend
from llnm.text.tokenize import MAX_TOKENS, ReportTokenizer


def tokenizer_path(model_repository: Path) -> Path:
    return Path(model_repository) / TEXT_ENCODER / "1" / "tokenizer.json"


def encode_reports(backend: InferenceBackend, tokenizer: ReportTokenizer, texts: list[str | None],
                   tokens: int = MAX_TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """-> token states (B, tokens, width) float32 and their mask (B, tokens) float32 (0: padding / no
    report). `tokens` (TMDLConfig.text_tokens) a multiple of the encoder's 50: that many windows of the
    report, each encoded alone, end to end (llnm.text.tokenize)."""
    if tokens % MAX_TOKENS:
        raise ValueError(f"text tokens {tokens}: a multiple of the encoder's {MAX_TOKENS} expected")
    windows = tokens // MAX_TOKENS
    out = backend.infer(TEXT_ENCODER, tokenizer([t or "" for t in texts], windows=windows))
    states, mask = out["token_states"].astype(np.float32), out["mask"].astype(np.float32)
    return states.reshape(len(texts), tokens, -1), mask.reshape(len(texts), tokens)
